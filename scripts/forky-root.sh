#!/usr/bin/env bash
# Build a Debian forky (testing) root directory with ejabberd, its Erlang/OTP
# and busybox, for the e2e lifecycle suite's second ejabberd flavour
# (KUBE_EPMD_EJABBERD_ROOT=DIR; tests/e2e/README.md). Run as root:
#
#   bash scripts/forky-root.sh DIR
#
# Reuses DIR when it already holds a complete root of the same package set
# (its stamp file); otherwise builds a new one beside DIR and moves it into
# place, so an interrupted build never leaves a half root at DIR. Prints the
# ejabberd and OTP versions inside. Non-interactive (no stdin needed).
#
# The mirror is the host's own Debian mirror (the one apt uses for the
# host's release); FORKY_MIRROR overrides it. Forky's Release file may be
# past its Valid-Until on a machine whose clock runs ahead of the archive's
# snapshot: the check is off for this build only. A policy-rc.d exiting 101
# stays in the root, so no package there ever starts a service.
set -euo pipefail

die() { echo "forky-root: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR (an absolute path)"
dir=$1
case $dir in /*) ;; *) die "DIR must be an absolute path: $dir" ;; esac
dir=${dir%/}
[ -n "$dir" ] || die "DIR must not be /"
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap in root mode, and the root's files owned by its users)"
command -v mmdebstrap >/dev/null ||
  die "mmdebstrap is not installed: apt-get install -y mmdebstrap"

suite=forky
variant=essential
# ejabberd and erlang-base need sysusers (and ejabberd tmpfiles); naming the
# standalone ones keeps apt from choosing systemd itself, the first
# alternative of their Depends.
packages=(ejabberd busybox systemd-standalone-sysusers systemd-standalone-tmpfiles)
stamp_name=.kube-epmd-forky-root

mirror=${FORKY_MIRROR:-}
if [ -z "$mirror" ]; then
  # shellcheck disable=SC1091 # the host's
  . /etc/os-release
  # shellcheck disable=SC2016 # apt's own $(FIELD) syntax
  mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null |
    awk -v rel="${VERSION_CODENAME:-}" '$2 == rel && $3 == "deb" { print $1; exit }')
  [ -n "$mirror" ] ||
    die "no Debian mirror for ${VERSION_CODENAME:-this release} in the host's apt sources; set FORKY_MIRROR"
fi
mirror=${mirror%/}

want="suite=$suite variant=$variant mirror=$mirror packages=${packages[*]}"

versions() {
  local root=$1
  dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package} ${Version}\n' \
    ejabberd erlang-base busybox
  local otp
  otp=$(cat "$root"/usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -n 1)
  echo "otp ${otp:-unknown}"
}

complete() {
  [ -f "$1/$stamp_name" ] && [ -x "$1/usr/sbin/policy-rc.d" ] && [ "$(cat "$1/$stamp_name")" = "$want" ] &&
    [ -x "$1/usr/sbin/ejabberdctl" ] && [ -x "$1/usr/bin/busybox" ] &&
    [ -x "$1/usr/bin/erl" ]
}

mkdir -p "$(dirname "$dir")"
# One build at a time for this DIR (parallel test runs, a second shell).
exec 9>"$dir.lock"
flock 9

if complete "$dir"; then
  echo "forky-root: reusing $dir ($want)"
  versions "$dir"
  exit 0
fi

# Never replace something that is not one of our roots.
if [ -e "$dir" ] && [ ! -f "$dir/$stamp_name" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists, is not empty and is not a root this script built ($stamp_name missing): remove it or pick another DIR"
fi

new="$dir.new.$$"
rm -rf "$new"
trap 'rm -rf "$new"' EXIT
t0=$(date +%s)
echo "forky-root: building $dir ($want)"
# shellcheck disable=SC2016 # "$1" is mmdebstrap's hook argument, the root
policy='printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"'
# shellcheck disable=SC2016 # as above
mmdebstrap --quiet --mode=root --variant="$variant" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --aptopt='APT::Install-Recommends "false"' \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --skip=chroot/policy-rc.d --essential-hook="$policy" \
  --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*' \
  "$suite" "$new" "$mirror" </dev/null
echo "$want" > "$new/$stamp_name"
complete "$new" || die "the new root lacks ejabberdctl, erl, busybox or its policy-rc.d"
if [ -e "$dir" ]; then
  old="$dir.old.$$"
  mv "$dir" "$old"
  mv "$new" "$dir"
  rm -rf "$old"
else
  mv "$new" "$dir"
fi
trap - EXIT
echo "forky-root: built $dir in $(($(date +%s) - t0)) s ($(du -sh "$dir" | cut -f1))"
versions "$dir"
