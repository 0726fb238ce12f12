#!/usr/bin/env bash
# Configures and builds keywarden into build/ (shared by demo.sh and test.sh).
# Warnings are errors. Usage: deploy/build.sh [extra cmake -D options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKEYWARDEN_WERROR=ON "$@" >/dev/null
cmake --build "$root/build" --parallel "$(nproc)"
