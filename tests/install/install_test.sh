#!/usr/bin/env bash
# cmake --install into a DESTDIR and cpack -G DEB: the files land where a
# Debian operator expects them, the man pages render and name every option
# the programs really have, the unit verifies (systemd-analyze, when there),
# and the .deb holds the same files with its dependencies.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR VERSION
set -euo pipefail
build=$1 src=$2 version=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

expected="/usr/bin/keywarden
/usr/bin/keywardend
/usr/lib/systemd/system/keywardend.service
/usr/lib/sysusers.d/keywarden.conf
/usr/share/doc/keywarden/API.md
/usr/share/doc/keywarden/README.md
/usr/share/doc/keywarden/RELIABILITY.md
/usr/share/doc/keywarden/SECURITY.md
/usr/share/doc/keywarden/keywarden.example.toml
/usr/share/man/man1/keywarden.1
/usr/share/man/man5/keywarden.toml.5
/usr/share/man/man8/keywardend.8"

# 1. cmake --install into a DESTDIR.
DESTDIR="$tmp/root" cmake --install "$build" --prefix /usr >"$tmp/install.log"
got=$(cd "$tmp/root" && find . -type f | sed 's/^\.//' | LC_ALL=C sort)
[ "$got" = "$expected" ] || fail "installed files differ:
$(diff <(echo "$expected") <(echo "$got"))"
cmp -s "$src/deploy/keywardend.service" "$tmp/root/usr/lib/systemd/system/keywardend.service" ||
  fail "installed unit differs from deploy/keywardend.service"
out=$("$tmp/root/usr/bin/keywardend" --version)
[ "$out" = "keywardend $version" ] || fail "keywardend --version said '$out'"

# 2. Man pages: render without warnings, carry the version, and name every
# option the programs' --help shows (and every keywarden verb).
for page in man1/keywarden.1 man5/keywarden.toml.5 man8/keywardend.8; do
  f="$tmp/root/usr/share/man/$page"
  warnings=$(groff -man -Tutf8 -ww -z "$f" 2>&1)
  [ -z "$warnings" ] || fail "$page: groff warnings: $warnings"
  grep -q "keywarden $version" "$f" || fail "$page: no version $version"
  grep -q '@' "$f" && fail "$page: unsubstituted @VARIABLE@"
done
render() { MANWIDTH=200 man -l "$1" 2>/dev/null | col -b; }
d8=$(render "$tmp/root/usr/share/man/man8/keywardend.8")
for opt in $("$tmp/root/usr/bin/keywardend" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
  grep -qF -- "$opt" <<<"$d8" || fail "keywardend(8) does not document $opt"
done
d1=$(render "$tmp/root/usr/share/man/man1/keywarden.1")
help=$("$tmp/root/usr/bin/keywarden" --help)
for opt in $(grep -oE -- '--[a-z][a-z-]+' <<<"$help" | sort -u); do
  grep -qF -- "$opt" <<<"$d1" || fail "keywarden(1) does not document $opt"
done
for verb in $(sed -n '/^Subcommands:/,/^$/p' <<<"$help" | awk '/^  [a-z]/ {print $1}'); do
  grep -qE "^ +$verb( |$)" <<<"$d1" || fail "keywarden(1) does not document the verb $verb"
done
for verb in token ceremony officer ca audit kra; do
  subs=$("$tmp/root/usr/bin/keywarden" "$verb" --help | sed -n '/^Subcommands:/,/^$/p' |
    awk '/^  [a-z]/ {print $1}')
  [ -n "$subs" ] || fail "keywarden $verb --help lists no subcommands"
  for sub in $subs; do
    grep -qE "^ +$verb .*\\b$sub\\b" <<<"$d1" ||
      fail "keywarden(1) does not document keywarden $verb $sub"
  done
done
d5=$(render "$tmp/root/usr/share/man/man5/keywarden.toml.5")
for table in $(grep -oE '^\[\[?[a-z.]+\]\]?' "$src/deploy/keywarden.example.toml" | sort -u); do
  grep -qF -- "$table" <<<"$d5" || fail "keywarden.toml(5) does not document $table"
done

# 3. The unit, as systemd reads it (binaries from the DESTDIR).
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir "$tmp/unit"
  sed "s|/usr/bin/keywardend|$tmp/root/usr/bin/keywardend|g" \
    "$tmp/root/usr/lib/systemd/system/keywardend.service" >"$tmp/unit/keywardend.service"
  verify=$(systemd-analyze verify --man=no "$tmp/unit/keywardend.service" 2>&1) ||
    fail "systemd-analyze verify: $verify"
  [ -z "$verify" ] || fail "systemd-analyze verify: $verify"
  for key in Type=notify WatchdogSec= StateDirectory=keywarden LoadCredential=ca-pin: \
    NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes LimitCORE=0 \
    MemoryDenyWriteExecute=yes; do
    grep -q "^$key" "$tmp/unit/keywardend.service" || fail "unit lacks $key"
  done
else
  echo "systemd-analyze not installed: unit not verified"
fi

# 4. The .deb.
(cd "$tmp" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1) ||
  fail "cpack: $(cat "$tmp/cpack.log")"
deb=$(ls "$tmp"/pkg/*.deb)
[ "$(basename "$deb")" = "keywarden_${version}_$(dpkg --print-architecture).deb" ] ||
  fail "package file name $(basename "$deb")"
in_deb=$(dpkg-deb -c "$deb" | awk '$1 ~ /^-/ {print $6}' | sed 's/^\.//' | LC_ALL=C sort)
[ "$in_deb" = "$expected" ] || fail ".deb files differ:
$(diff <(echo "$expected") <(echo "$in_deb"))"
depends=$(dpkg-deb -f "$deb" Depends)
names=$(tr ',' '\n' <<<"$depends" | sed 's/^ *//; s/ .*//')
for dep in systemd libsystemd0 libgrpc++1.51 libssl3 libp11-kit0 libsqlite3-0; do
  grep -qxF "$dep" <<<"$names" || fail ".deb Depends lacks $dep: $depends"
done
mode=$(dpkg-deb -c "$deb" | awk '$6 == "./usr/bin/keywardend" {print $1}')
[ "$mode" = "-rwxr-xr-x" ] || fail "keywardend in the .deb is $mode"
dpkg-deb -e "$deb" "$tmp/control"
cmp -s "$tmp/control/postinst" "$src/deploy/debian/postinst" || fail ".deb postinst differs"
echo "install and package: ok ($(wc -l <<<"$expected") files, $(basename "$deb"))"
