#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, one per parser of untrusted
# input) with Debian's clang into build-fuzz/ and runs each one briefly,
# seeded with real inputs: the Windows key-archival vectors, real
# PRIVATEKEYBLOBs and a PKCS#8 key, CSRs, PFX files, CMS, certificates and
# CRLs made by openssl, names, and the example configuration. Inputs up to
# 64 KiB. Any crash, sanitizer report (ASan/UBSan) or leak fails the run;
# the input that caused it is kept in build-fuzz/artifacts/.
#
# Usage: deploy/fuzz.sh [SECONDS per target]   (default $KEYWARDEN_FUZZ_SECONDS or 30)
# Targets run as many at a time as there are cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-${KEYWARDEN_FUZZ_SECONDS:-30}}
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
targets=(cmc_fuzzer private_key_blob_fuzzer request_fuzzer name_fuzzer pkcs12_fuzzer
  recovery_blob_fuzzer trust_files_fuzzer exchange_certificate_fuzzer config_fuzzer
  encrypted_key_fuzzer key_file_fuzzer threshold_fuzzer)
start=$(date +%s)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DKEYWARDEN_WERROR=ON \
  -DKEYWARDEN_BUILD_BENCHMARKS=OFF -DKEYWARDEN_VECTORS_DIR="$vectors" >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}"
built=$(date +%s)

# Seed corpora, made fresh each run (libFuzzer adds what it finds to them).
seeds="$build/seeds"
rm -rf "$seeds" "$build/artifacts"
for t in "${targets[@]}"; do mkdir -p "$seeds/$t"; done
mkdir -p "$build/artifacts"
cp "$vectors"/*.der "$seeds/cmc_fuzzer/"
cp "$vectors"/*.der "$seeds/request_fuzzer/"
cp "$vectors"/*.der "$seeds/recovery_blob_fuzzer/"  # CMS SignedData, as blobs are
# PRIVATEKEYBLOBs: the keys Windows archived in the vectors the published
# exchange key opens (the 21.13 ContentInfo follows the attribute's SET)...
for v in user-enroll-1 user-enroll-2 user-enroll-3; do
  offset=$(openssl asn1parse -inform DER -in "$vectors/$v.der" |
    awk '/:1\.3\.6\.1\.4\.1\.311\.21\.13/ { getline; getline; split($1, a, ":"); print a[1]; exit }')
  openssl asn1parse -inform DER -in "$vectors/$v.der" -strparse "$offset" -noout \
    -out "$build/seeds/$v.env.der" >/dev/null
  openssl cms -decrypt -binary -inform DER -in "$build/seeds/$v.env.der" \
    -inkey "$vectors/ca-exchange-key.pem" -out "$seeds/private_key_blob_fuzzer/$v.blob"
  mv "$build/seeds/$v.env.der" "$seeds/encrypted_key_fuzzer/"
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

# The other parsers' seeds, made with openssl (an independent implementation).
mk=$(mktemp -d)
trap 'rm -rf "$mk" ${tmp:+"$tmp"}' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$mk/ca.key" -subj "/O=keywarden/CN=Seed CA" \
  -days 2 -out "$mk/ca.pem" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout "$mk/u.key" -subj "/O=keywarden/CN=seed user" \
  -out "$mk/u.csr" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$mk/e.key" \
  -subj "/CN=ec seed" -outform DER -out "$seeds/request_fuzzer/ec.csr.der" 2>/dev/null
cp "$mk/u.csr" "$seeds/request_fuzzer/rsa.csr.pem"
openssl req -in "$mk/u.csr" -outform DER -out "$seeds/request_fuzzer/rsa.csr.der"
printf 'keyUsage=critical,keyEncipherment\nextendedKeyUsage=1.3.6.1.4.1.311.21.5\n' >"$mk/xext"
openssl x509 -req -in "$mk/u.csr" -CA "$mk/ca.pem" -CAkey "$mk/ca.key" -set_serial 9 -days 2 \
  -extfile "$mk/xext" -out "$mk/x.pem" 2>/dev/null
cat <(openssl x509 -in "$mk/x.pem" -outform DER) <(openssl x509 -in "$mk/ca.pem" -outform DER) \
  >"$seeds/exchange_certificate_fuzzer/xchg-and-ca.der"
openssl x509 -in "$mk/ca.pem" -outform DER -out "$seeds/exchange_certificate_fuzzer/ca.der"
openssl pkcs12 -export -inkey "$mk/u.key" -in "$mk/x.pem" -certfile "$mk/ca.pem" \
  -passout pass:fuzz -out "$seeds/pkcs12_fuzzer/aes.pfx"
openssl pkcs12 -export -inkey "$mk/u.key" -in "$mk/x.pem" -passout pass:fuzz \
  -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 -out "$seeds/pkcs12_fuzzer/3des.pfx"
openssl pkcs12 -export -inkey "$mk/u.key" -in "$mk/x.pem" -passout pass: \
  -out "$seeds/pkcs12_fuzzer/empty-password.pfx"
echo "seed content" >"$mk/content"
openssl cms -sign -binary -nodetach -in "$mk/content" -signer "$mk/ca.pem" -inkey "$mk/ca.key" \
  -outform DER -out "$seeds/recovery_blob_fuzzer/signed.der"
openssl cms -sign -binary -nodetach -in "$mk/content" -signer "$mk/ca.pem" -inkey "$mk/ca.key" \
  -outform PEM -out "$seeds/recovery_blob_fuzzer/signed.pem"
cp "$mk/ca.pem" "$seeds/trust_files_fuzzer/ca.pem"
cat "$mk/ca.pem" "$mk/x.pem" >"$seeds/trust_files_fuzzer/chain.pem"
printf '[ca]\ndefault_ca = s\n[s]\ndatabase = %s/index\ncrlnumber = %s/crlnumber\ndefault_md = sha256\ndefault_crl_days = 7\n' \
  "$mk" "$mk" >"$mk/ca.cnf"
: >"$mk/index"
echo 01 >"$mk/crlnumber"
openssl ca -config "$mk/ca.cnf" -keyfile "$mk/ca.key" -cert "$mk/ca.pem" -gencrl \
  -out "$seeds/trust_files_fuzzer/empty.crl.pem" 2>/dev/null
openssl ca -config "$mk/ca.cnf" -keyfile "$mk/ca.key" -cert "$mk/ca.pem" -revoke "$mk/x.pem" \
  -crl_reason keyCompromise 2>/dev/null
openssl ca -config "$mk/ca.cnf" -keyfile "$mk/ca.key" -cert "$mk/ca.pem" -gencrl \
  -out "$mk/revoked.crl.pem" 2>/dev/null
cp "$mk/revoked.crl.pem" "$seeds/trust_files_fuzzer/"
openssl crl -in "$mk/revoked.crl.pem" -outform DER -out "$seeds/trust_files_fuzzer/revoked.crl.der"
n=0
for name in "CN=alice,O=Example" "/C=DE/O=keywarden/CN=Demo Root CA" \
  'CN=a\,b+OU=x,O=y' "CN=caf\xc3\xa9,O=x" "emailAddress=a@example.com,CN=x,DC=example,DC=com" \
  'CN=\#23,O=\ lead' "1.2.3.4=oid,CN=x"; do
  printf '%b' "$name" >"$seeds/name_fuzzer/$((n += 1))"
done
cp "$root/deploy/keywarden.example.toml" "$seeds/config_fuzzer/"
# Key files as verifykeys reads them (protected ones with the password "fuzz").
k=$seeds/key_file_fuzzer
cp "$mk/u.key" "$k/pkcs8.pem"
openssl pkey -in "$mk/u.key" -outform DER -out "$k/pkcs8.der"
openssl rsa -in "$mk/u.key" -traditional -out "$k/rsa.pem" 2>/dev/null
openssl rsa -in "$mk/u.key" -traditional -des3 -passout pass:fuzz -out "$k/rsa-des3.pem" 2>/dev/null
openssl pkcs8 -topk8 -in "$mk/u.key" -v2 aes-256-cbc -passout pass:fuzz -out "$k/pkcs8-enc.pem"
openssl rsa -in "$mk/u.key" -outform MSBLOB -out "$k/key.blob" 2>/dev/null
cp "$mk/e.key" "$k/ec.pem"
cp "$seeds/pkcs12_fuzzer/aes.pfx" "$seeds/pkcs12_fuzzer/3des.pfx" "$k/"
cp "$mk/x.pem" "$k/cert.pem"
# A 2-of-3 threshold archive and a share contribution (tests/pki/threshold_test.cc wrote them).
cp "$root/tests/fuzz/seeds/threshold/"* "$seeds/threshold_fuzzer/"
openssl x509 -in "$mk/x.pem" -outform DER -out "$k/cert.der"
openssl pkey -in "$mk/u.key" -pubout -out "$k/pub.pem"

run() {  # target: runs it, prints its figures; 1 if it failed
  local t=$1
  # -rss_limit_mb: the parsers must not balloon on hostile lengths either.
  if "$build/tests/fuzz/$t" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
    -rss_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
    "$seeds/$t" >"$build/$t.log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$build/$t.log" | tail -1 || true)
    echo "fuzz: $t ok: ${execs:-?} runs in ${seconds}s, $cov"
  else
    echo "fuzz: $t FAILED; log $build/$t.log, inputs in $build/artifacts/:" >&2
    tail -n 40 "$build/$t.log" >&2
    return 1
  fi
}
status=0
jobs_at_once=$(nproc)
pids=()
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs_at_once" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
end=$(date +%s)
echo "fuzz: build $((built - start))s, runs $((end - built))s"
exit $status
