#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the
# packages, builds with warnings as errors, and runs every test (real
# SoftHSM2 tokens, real OpenSSL, independent tools) with ctest; then builds
# the libFuzzer targets with clang and runs each briefly (deploy/fuzz.sh;
# KEYWARDEN_FUZZ_SECONDS=0 skips that).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/deploy/install-deps.sh"
"$root/deploy/build.sh"
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
if [ "${KEYWARDEN_FUZZ_SECONDS:-40}" != 0 ]; then
  "$root/deploy/fuzz.sh"
fi
