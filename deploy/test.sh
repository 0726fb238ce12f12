#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the
# packages, builds with warnings as errors, and runs every test (real
# SoftHSM2 tokens, real OpenSSL, independent tools) with ctest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/deploy/install-deps.sh"
"$root/deploy/build.sh"
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
