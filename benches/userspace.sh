#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind "Ir"), kube-epmd
# and OTP's C epmd side by side. Unlike CPU time, instruction counts do not
# move with the load other people put on a shared machine, so they show the
# daemon's own work; they do not include kernel time (see compare.sh for
# that). They still move by up to ~30 % between runs on a busy machine (how
# many requests one event-loop wake-up serves changes): run it a few times
# and quote ranges. Loopback only; port 16102.
#
#   benches/userspace.sh [--requests N] [--keep DIR] [BINARY]
#
# BINARY (default target/release/kube-epmd, built first) is measured as
# is, with the epmd-load next to it: a copied build can be measured while
# the tree changes. --keep DIR keeps the callgrind outputs there, for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

N=2000
KEEP=
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    *) break ;;
  esac
done
PORT=${UPORT:-16102}
KUBE=${1:-}
C_EPMD=$(ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -n1 || true)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$C_EPMD" ] || { echo "OTP's epmd not found (apt-get install erlang-base)" >&2; exit 1; }
if [ -z "$KUBE" ]; then
  cargo build --release --quiet --bin kube-epmd --bin epmd-load
  KUBE=target/release/kube-epmd
fi
LOAD=$(dirname "$KUBE")/epmd-load
[ -x "$LOAD" ] || { echo "$LOAD not found (it is built with the daemon)" >&2; exit 1; }
if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"; OUT=$KEEP
else
  OUT=$(mktemp -d)
fi
VP=
trap '[ -n "$VP" ] && kill "$VP" 2>/dev/null; [ -n "$KEEP" ] || rm -rf "$OUT"' EXIT

# Instructions per request of daemon $2 (label $1) under mode $3: counters
# are zeroed once the daemon is up, so start-up is not counted.
ir_per_req() {
  ERL_EPMD_PORT=$PORT valgrind --tool=callgrind --callgrind-out-file="$OUT/$1.%p" \
    "$2" -port "$PORT" -address 127.0.0.1 >/dev/null 2>&1 &
  VP=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  callgrind_control -z "$VP" >/dev/null 2>&1
  "$LOAD" --port "$PORT" --mode "$3" --clients 2 --count "$N" --duration 120 --kv >/dev/null
  callgrind_control -d "$VP" >/dev/null 2>&1
  kill "$VP"; wait "$VP" 2>/dev/null || true
  awk -v n="$N" '/^totals:/ { t = $2 } END { printf "%.0f", t / n }' "$OUT/$1.$VP.1"
  VP=
}

printf '| %-12s | %14s | %14s | %7s |\n' mode "kube-epmd Ir" "C epmd Ir" kube/C
printf '|%s|%s|%s|%s|\n' -------------- ---------------- ---------------- ---------
for m in port-please names alive-churn; do
  k=$(ir_per_req kube "$KUBE" "$m")
  c=$(ir_per_req c "$C_EPMD" "$m")
  printf '| %-12s | %14s | %14s | %7s |\n' "$m" "$k" "$c" "$(awk -v a="$k" -v b="$c" 'BEGIN { printf "%.2f", a / b }')"
done
