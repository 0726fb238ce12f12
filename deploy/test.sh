#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the
# packages, builds with warnings as errors, and runs every test (real
# SoftHSM2 tokens, real OpenSSL, independent tools) with ctest; then builds
# the libFuzzer targets with clang and runs each briefly (deploy/fuzz.sh;
# KEYWARDEN_FUZZ_SECONDS=0 skips that). The PostgreSQL tests run against a
# throwaway cluster started here (deploy/pg-cluster.sh) and stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/deploy/install-deps.sh"
"$root/deploy/build.sh"
cd "$root/build"
# A throwaway PostgreSQL for the PostgreSQL backend's tests (deploy/pg-cluster.sh),
# stopped however ctest ends; with KEYWARDEN_REQUIRE_PG=1 those tests fail
# instead of skipping when it is missing.
pgdir=$(mktemp -d /tmp/keywarden-pg.XXXXXX)
chmod 0755 "$pgdir"
cleanup_pg() {
  "$root/deploy/pg-cluster.sh" stop "$pgdir/c" >/dev/null 2>&1 || true
  rm -rf "$pgdir"
}
trap cleanup_pg EXIT
KEYWARDEN_TEST_PG=$("$root/deploy/pg-cluster.sh" start "$pgdir/c" </dev/null)
export KEYWARDEN_TEST_PG KEYWARDEN_REQUIRE_PG=1
ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
if [ "${KEYWARDEN_FUZZ_SECONDS:-40}" != 0 ]; then
  "$root/deploy/fuzz.sh"
fi
