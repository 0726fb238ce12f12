#!/usr/bin/env bash
# Installs the Debian 12 packages keywarden needs to build, test and run the
# demo. Idempotent: packages already present are skipped by apt-get, and
# `apt-get update` runs only when something is missing.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang-format
  # fuzzing (deploy/fuzz.sh): clang, and libFuzzer + sanitizer runtimes
  clang-14 libclang-rt-14-dev
  # gRPC / protobuf
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libabsl-dev
  # crypto and PKCS#11
  # libssl3 ships ossl-modules/legacy.so: RC2 PFX files (Windows XP/2003) are read with it
  libssl-dev libssl3 openssl libp11-kit-dev p11-kit libp11-dev libengine-pkcs11-openssl
  softhsm2 opensc gnutls-bin
  # storage
  libsqlite3-dev sqlite3 libpq-dev postgresql-15
  # libraries for the daemon and CLI
  libcli11-dev libtomlplusplus-dev libspdlog-dev nlohmann-json3-dev libsystemd-dev
  libcpp-httplib-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3 python3-grpcio python3-grpc-tools
  python3-prometheus-client
  # the issuance benchmark compares keywardend with cfssl serve (tests/bench/issue_bench.cc)
  golang-cfssl
  # the install and package test: man pages rendered, the unit verified
  man-db groff-base bsdextrautils systemd
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
# The tests start their own throwaway cluster (deploy/pg-cluster.sh): keep
# the package from creating and starting a system-wide "main" cluster.
if printf '%s\n' "${missing[@]}" | grep -qx 'postgresql-15' && [ ! -d /etc/postgresql/15/main ]; then
  $sudo mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" |
    $sudo tee /etc/postgresql-common/createcluster.d/keywarden-no-main.conf >/dev/null
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
