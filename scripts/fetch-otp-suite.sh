#!/usr/bin/env bash
# Fetch OTP's own EPMD test suite (erts/epmd/test/epmd_SUITE.erl, and the
# ts_install_cth hook it names) from Debian's source package of the
# installed erlang-base, into target/otp-src/. No root needed and nothing
# on the system changes: apt runs with a private deb-src list and cache.
# tests/otp_epmd_suite.rs runs the suite from there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/otp-src
if [ -f "$dest/epmd_SUITE.erl" ] && [ -f "$dest/ts_install_cth.erl" ]; then
  exit 0
fi
version=$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null) || {
  echo "fetch-otp-suite: erlang-base is not installed (apt-get install erlang-base)" >&2
  exit 1
}
. /etc/os-release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
cat > "$work/parts/deb-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME} ${VERSION_CODENAME}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: ${VERSION_CODENAME}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
  -o APT::Sandbox::User=root)
[ "$(id -u)" = 0 ] || apt_opts+=(-o Debug::NoLocking=1)
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "erlang=$version" >/dev/null)
orig=$(ls "$work"/src/erlang_*.orig.tar.xz)
# Debian's patches touch neither file (checked here), so the upstream
# tarball's copies are the packaged ones.
if tar -xJf "$work"/src/erlang_*.debian.tar.xz -O --wildcards 'debian/patches/*' |
    grep -q -E '^\+\+\+ .*(epmd_SUITE\.erl|ts_install_cth\.erl)'; then
  echo "fetch-otp-suite: a Debian patch changes the suite; apply it (dpkg-source -x)" >&2
  exit 1
fi
tar -xJf "$orig" -C "$work/src" --wildcards \
  '*/erts/epmd/test/epmd_SUITE.erl' '*/lib/common_test/test_server/ts_install_cth.erl'
mkdir -p "$dest"
cp "$work"/src/otp-*/erts/epmd/test/epmd_SUITE.erl \
   "$work"/src/otp-*/lib/common_test/test_server/ts_install_cth.erl "$dest/"
echo "$version" > "$dest/VERSION"
echo "fetch-otp-suite: epmd_SUITE of erlang $version in $dest"
