#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with Debian's clang into
# build-fuzz/ and runs each one briefly, seeded with the Windows
# key-archival vectors (CMC requests) and with real PRIVATEKEYBLOBs and a
# PKCS#8 key (the archived-key plaintext parsers). Any crash, sanitizer
# report (ASan/UBSan) or leak fails the run; the input that caused it is
# kept in build-fuzz/artifacts/.
#
# Usage: deploy/fuzz.sh [SECONDS per target]   (default $KEYWARDEN_FUZZ_SECONDS or 40)
# The targets run in parallel, so the run takes about SECONDS on 2+ cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-${KEYWARDEN_FUZZ_SECONDS:-40}}
vectors=${KEYWARDEN_VECTORS_DIR:-$root/../shared/vectors/windows-key-archival}
vectors=$(cd "$vectors" 2>/dev/null && pwd) || {
  echo "fuzz: the Windows key-archival vectors are missing (set KEYWARDEN_VECTORS_DIR)" >&2
  exit 1
}
[ -f "$vectors/user-enroll-1.der" ] || {
  echo "fuzz: $vectors has no user-enroll-1.der" >&2
  exit 1
}
cc=${KEYWARDEN_FUZZ_CC:-clang-14}
cxx=${KEYWARDEN_FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (deploy/install-deps.sh)" >&2; exit 1; }

build="$root/build-fuzz"
targets=(cmc_fuzzer private_key_blob_fuzzer)
start=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DKEYWARDEN_WERROR=ON \
  -DKEYWARDEN_BUILD_BENCHMARKS=OFF -DKEYWARDEN_VECTORS_DIR="$vectors" >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}"
built=$(date +%s)

# Seed corpora, made fresh each run (libFuzzer adds what it finds to them).
seeds="$build/seeds"
rm -rf "$seeds" "$build/artifacts"
mkdir -p "$seeds/cmc_fuzzer" "$seeds/private_key_blob_fuzzer" "$build/artifacts"
cp "$vectors"/*.der "$seeds/cmc_fuzzer/"
# PRIVATEKEYBLOBs: the keys Windows archived in the vectors the published
# exchange key opens (the 21.13 ContentInfo follows the attribute's SET)...
for v in user-enroll-1 user-enroll-2 user-enroll-3; do
  offset=$(openssl asn1parse -inform DER -in "$vectors/$v.der" |
    awk '/:1\.3\.6\.1\.4\.1\.311\.21\.13/ { getline; getline; split($1, a, ":"); print a[1]; exit }')
  openssl asn1parse -inform DER -in "$vectors/$v.der" -strparse "$offset" -noout \
    -out "$build/seeds/$v.env.der" >/dev/null
  openssl cms -decrypt -binary -inform DER -in "$build/seeds/$v.env.der" \
    -inkey "$vectors/ca-exchange-key.pem" -out "$seeds/private_key_blob_fuzzer/$v.blob"
  rm -f "$build/seeds/$v.env.der"
done
# ... a small one written by OpenSSL itself, and a PKCS#8 key.
openssl genrsa 512 2>/dev/null | openssl rsa -outform MSBLOB \
  -out "$seeds/private_key_blob_fuzzer/openssl-512.blob" 2>/dev/null
cp "$vectors/ca-exchange-key.pk8.der" "$seeds/private_key_blob_fuzzer/"
# keywarden's own archival requests (client info, name/value pair, SHA-256,
# AES, PKCS#8), when the normal build has made the CLI (deploy/test.sh has).
cli="$root/build/cli/keywarden"
if [ -x "$cli" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/ca.key" -subj "/CN=Fuzz CA" \
    -days 2 -out "$tmp/ca.pem" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$tmp/x.key" -subj "/CN=Fuzz CA-Xchg" \
    -out "$tmp/x.csr" 2>/dev/null
  printf 'keyUsage=critical,keyEncipherment\nextendedKeyUsage=1.3.6.1.4.1.311.21.5\n' >"$tmp/ext"
  openssl x509 -req -in "$tmp/x.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -set_serial 7 \
    -days 2 -extfile "$tmp/ext" -out "$tmp/x.pem" 2>/dev/null
  common=(request --exchange-cert "$tmp/x.pem" --ca-cert "$tmp/ca.pem" --key-bits 1024)
  "$cli" "${common[@]}" --template User --subject "CN=fuzz,O=keywarden" \
    --out "$seeds/cmc_fuzzer/keywarden-sha1-3des.der" --key-out "$tmp/k1.pem" >/dev/null
  "$cli" "${common[@]}" --template 1.3.6.1.4.1.311.21.8.1.2 --digest sha256 --cipher aes256 \
    --key-format pkcs8 --out "$seeds/cmc_fuzzer/keywarden-sha256-aes.der" \
    --key-out "$tmp/k2.pem" >/dev/null
fi

pids=()
for t in "${targets[@]}"; do
  # -rss_limit_mb: the parsers must not balloon on hostile lengths either.
  "$build/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "$seeds/$t" \
    >"$build/$t.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$build/$t.log" | tail -1 || true)
    echo "fuzz: $t ok: ${execs:-?} runs in ${seconds}s, $cov"
  else
    status=1
    echo "fuzz: $t FAILED; log $build/$t.log, inputs in $build/artifacts/:" >&2
    tail -n 40 "$build/$t.log" >&2
  fi
done
end=$(date +%s)
echo "fuzz: build $((built - start))s, runs $((end - built))s"
exit $status
