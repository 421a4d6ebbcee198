#!/usr/bin/env bash
# Print one of the commands README.md's "Set-up" block tells a user to
# type, exactly as written (without its trailing comment), so CI runs what
# the README says and the two cannot drift:
#   scripts/readme-command.sh daemon   # the line marked "starts the daemon"
#   scripts/readme-command.sh test     # the line marked "runs every test"
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  daemon) mark='starts the daemon' ;;
  test) mark='runs every test' ;;
  *) echo "usage: $0 daemon|test" >&2; exit 2 ;;
esac
# The first ```sh block after "## Set-up".
block=$(awk '/^## Set-up/{s=1} s&&/^```sh/{b=1;next} b&&/^```/{exit} b' README.md)
line=$(printf '%s\n' "$block" | grep -F "# $mark" || true)
if [ "$(printf '%s' "$line" | grep -c .)" != 1 ]; then
  echo "README.md's Set-up block has no single line marked '# $mark'" >&2
  exit 1
fi
printf '%s\n' "${line%%#*}" | sed 's/[[:space:]]*$//'
