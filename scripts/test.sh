#!/usr/bin/env bash
# The README's test command: prepare what the tests need, then run them all.
#
# As root on Debian it installs what is missing (erlang-base,
# erlang-common-test, erlang-dev, ejabberd and rabbitmq-server with their
# services kept from starting, iproute2, busybox, xz-utils, mmdebstrap), raises the open-file limit, fetches OTP's
# epmd_SUITE from Debian's source package, builds the forky root of the
# second ejabberd flavour (scripts/forky-root.sh; reused when complete) and
# exports KUBE_EPMD_EJABBERD_ROOT, and runs `cargo test`.
# Otherwise it says exactly what is missing and exits 1, unless every
# missing prerequisite is named in KUBE_EPMD_TEST_SKIP (README, "Set-up"):
# then the tests that need them show as ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

skip=",${KUBE_EPMD_TEST_SKIP:-},"
skipping() { [[ "$skip" == *",$1,"* ]]; }
missing=()
note() { missing+=("$1"); }

is_root=false
[ "$(id -u)" = 0 ] && is_root=true

# Debian packages the tests use, with the command or file that shows each.
# The root of the forky ejabberd flavour (tests/e2e/lifecycle.rs), kept
# across runs outside the work tree (the tests bind the repository into it).
forky_root=${KUBE_EPMD_EJABBERD_ROOT:-/var/cache/kube-epmd/forky-root}

declare -A pkg_has=(
  [erlang-base]=/usr/bin/erl
  [erlang-ssl]=/usr/lib/erlang/lib/ssl-*/ebin/ssl.app
  [tcpdump]=/usr/bin/tcpdump
  [erlang-common-test]=/usr/bin/ct_run
  [erlang-dev]=/usr/lib/erlang/lib/common_test-*/include/ct.hrl
  [ejabberd]=/usr/sbin/ejabberdctl
  [rabbitmq-server]=/usr/sbin/rabbitmq-server
  [iproute2]=/usr/bin/ip
  [busybox]=/usr/bin/busybox
  [xz-utils]=/usr/bin/xz
  [mmdebstrap]=/usr/bin/mmdebstrap
)
want_pkgs=()
for p in "${!pkg_has[@]}"; do
  # shellcheck disable=SC2086 # the glob in erlang-dev's path
  compgen -G ${pkg_has[$p]} >/dev/null || want_pkgs+=("$p")
done

if [ ${#want_pkgs[@]} -gt 0 ] && $is_root; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep package installs from starting services (ejabberd, rabbitmq, epmd) on the
  # host; remove the blocker afterwards only if we put it there.
  made_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=true
  fi
  trap '$made_policy && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq "${want_pkgs[@]}" >/dev/null
  if $made_policy; then rm -f /usr/sbin/policy-rc.d; made_policy=false; fi
  want_pkgs=()
fi
for p in "${want_pkgs[@]}"; do
  case $p in
    erlang-base) skipping erl || note "erl: apt-get install erlang-base (or KUBE_EPMD_TEST_SKIP=erl)" ;;
    erlang-ssl) skipping erl || note "erl: apt-get install erlang-ssl, for distribution over TLS (or KUBE_EPMD_TEST_SKIP=erl)" ;;
    tcpdump) skipping tcpdump || skipping root || note "tcpdump: apt-get install tcpdump (or KUBE_EPMD_TEST_SKIP=tcpdump)" ;;
    erlang-common-test|erlang-dev) skipping otp-suite || note "otp-suite: apt-get install $p (or KUBE_EPMD_TEST_SKIP=otp-suite)" ;;
    ejabberd) skipping ejabberd || note "ejabberd: apt-get install ejabberd, with /usr/sbin/policy-rc.d exiting 101 so the service does not start (or KUBE_EPMD_TEST_SKIP=ejabberd)" ;;
    iproute2) skipping netns || skipping root || note "netns: apt-get install iproute2 (or KUBE_EPMD_TEST_SKIP=netns)" ;;
    rabbitmq-server) skipping rabbitmq || note "rabbitmq: apt-get install rabbitmq-server, with /usr/sbin/policy-rc.d exiting 101 so the service does not start (or KUBE_EPMD_TEST_SKIP=rabbitmq)" ;;
    busybox) skipping busybox || note "busybox: apt-get install busybox (or KUBE_EPMD_TEST_SKIP=busybox)" ;;
    xz-utils) skipping otp-suite || note "otp-suite: apt-get install xz-utils, to unpack OTP's source (or KUBE_EPMD_TEST_SKIP=otp-suite)" ;;
    mmdebstrap) ;; # the forky step below says what to do
  esac
done

$is_root || skipping root ||
  note "root: network namespaces, veth pairs and ejabberd's user need root; run as root (or KUBE_EPMD_TEST_SKIP=root)"

# kubectl >= 1.27 (kustomize v5 renders deploy/). Not in Debian (its
# kubernetes-client is 1.20), so never installed from here.
if ! skipping kubectl; then
  minor=$(kubectl version --client -o json 2>/dev/null |
    sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -1)
  if [ -z "$minor" ] || [ "$minor" -lt 27 ]; then
    note "kubectl >= 1.27 (found: ${minor:+1.}${minor:-none}): install package kubectl from the Kubernetes apt repository https://pkgs.k8s.io/core:/stable:/v1.32/deb/ (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) (or KUBE_EPMD_TEST_SKIP=kubectl)"
  fi
fi

# tests/abuse.rs holds 3000 sockets and the daemon as many.
if ! skipping nofile; then
  ulimit -Hn 65536 2>/dev/null || true
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 3200 ]; then
    note "nofile: open-file limit $(ulimit -n) < 3200: raise it (ulimit -Hn, /etc/security/limits.conf) (or KUBE_EPMD_TEST_SKIP=nofile)"
  fi
fi

if ! skipping otp-suite && ! skipping erl; then
  bash scripts/fetch-otp-suite.sh || note "otp-suite: could not fetch OTP's epmd_SUITE (see above) (or KUBE_EPMD_TEST_SKIP=otp-suite)"
fi

# ejabberd 26.07 on OTP 29 from Debian forky, in a root of its own (about
# 150 MB; under a minute to build, instant when already complete).
# Its tests need network namespaces: skipping root or netns skips them too.
if ! skipping forky && ! skipping root && ! skipping netns; then
  if $is_root && command -v mmdebstrap >/dev/null; then
    if bash scripts/forky-root.sh "$forky_root" </dev/null; then
      export KUBE_EPMD_EJABBERD_ROOT=$forky_root
    else
      note "forky: scripts/forky-root.sh $forky_root failed (see above) (or KUBE_EPMD_TEST_SKIP=forky)"
    fi
  else
    note "forky: as root, apt-get install -y mmdebstrap; bash scripts/forky-root.sh $forky_root; export KUBE_EPMD_EJABBERD_ROOT=$forky_root (or KUBE_EPMD_TEST_SKIP=forky)"
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: cannot run every test; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

# Every test binary, even after a failure: one run shows every problem.
cargo test --no-fail-fast
