#!/usr/bin/env bash
# Run the daemon command given as $1 (.ci/run passes README.md's, as
# written; default: read it from the README) and check that the daemon
# answering on 4369 is the one it started; then stop it by its pid.
# It runs in a private network namespace (root: `unshare -n`), so whatever
# else holds 4369 on this machine neither blocks nor answers it.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-$(bash scripts/readme-command.sh daemon)}
# The binary the command runs (and the client used to ask it).
profile=debug
build=(cargo build --bin kube-epmd)
case " $cmd " in *" --release "*) profile=release; build+=(--release) ;; esac
client=target/$profile/kube-epmd
if [ -z "${KUBE_EPMD_IN_NETNS:-}" ]; then
  # Build first, outside the 60 s wait below (a cold release build is slow).
  "${build[@]}"
  exec unshare -n env KUBE_EPMD_IN_NETNS=1 bash "$0" "$cmd"
fi
ip link set lo up
echo "check-readme-daemon: running: $cmd"
log=$(mktemp)
bash -c "exec $cmd" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
answered=false
for _ in $(seq 1 600); do
  kill -0 "$pid" 2>/dev/null || { echo "the daemon exited:"; cat "$log"; exit 1; }
  # `cargo run` execs the binary: $pid is the daemon itself, once it runs.
  if [ "$(readlink "/proc/$pid/exe")" = "$(readlink -f "$client")" ] &&
     "$client" -names >/dev/null 2>&1; then
    answered=true
    break
  fi
  sleep 0.1
done
$answered || { echo "no answer on 4369 within 60 s:"; cat "$log"; exit 1; }
# The listener on 4369 is a socket of the process we started.
inodes=$(awk 'NR>1 && $4=="0A" && $2 ~ /:1111$/ {print $10}' /proc/net/tcp /proc/net/tcp6)
[ -n "$inodes" ] || { echo "nothing listens on 4369"; exit 1; }
for i in $inodes; do
  ls -l "/proc/$pid/fd" 2>/dev/null | grep -q "socket:\[$i\]" ||
    { echo "4369 is held by another process (socket $i), not pid $pid"; exit 1; }
done
# And it answers as an EPMD: a node registered with it shows in -names.
(cd /tmp && exec erl -noshell -sname readme_probe -start_epmd false -eval "timer:sleep(60000)") &
node=$!
trap 'kill "$pid" "$node" 2>/dev/null || true; rm -f "$log"' EXIT
seen=false
for _ in $(seq 1 100); do
  if "$client" -names 2>/dev/null | grep -q '^name readme_probe at port'; then seen=true; break; fi
  sleep 0.1
done
$seen || { echo "a node registered with it does not show in -names"; "$client" -names || true; exit 1; }
"$client" -names
# The probe is ours and needs no clean stop: SIGKILL. An Erlang VM can
# lose a SIGTERM that arrives between its registration and the start of
# its signal handler (seen: 10 of 20 probes killed right after they showed
# in -names never exited), and an unbounded wait on it hung a CI run.
kill -KILL "$node"
wait "$node" 2>/dev/null || true
kill -TERM "$pid"
# Bounded: the daemon drains for 2 s at most; 20 s means it is stuck.
for _ in $(seq 1 200); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
  echo "the daemon still runs 20 s after SIGTERM:"; cat "$log"
  kill -KILL "$pid"; exit 1
fi
wait "$pid" || { echo "the daemon did not exit cleanly on SIGTERM"; cat "$log"; exit 1; }
echo "check-readme-daemon: ok, pid $pid answered on 4369 and stopped on SIGTERM"
