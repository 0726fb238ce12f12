#!/usr/bin/env bash
# The main job end to end on the embedded default, from a fresh Debian 12
# machine: installs the packages, builds, makes SoftHSM2 tokens (the CA HSM
# and three KRA cards), and runs a key ceremony whose results are checked
# with independent tools.
#
# The ceremony runs from one file (keywarden ceremony run): the CA key made
# on the token and the root signed there through keywarden's OpenSSL
# provider, three Key Recovery Agent keys made on their cards and certified,
# the daemon's [ca]/[hsm]/[kra] configuration, a round-trip proof (a
# throwaway key archived to the new KRAs and recovered with each card) and
# a signed transcript. Then it starts keywardend on loopback (SQLite,
# mutual TLS), and enrols, approves, revokes and audits through the
# keywarden CLI. Then the main job: alice enrols with key archival (Windows-format CMC
# request), encrypts a file and loses her key; the Certificate Manager
# retrieves the recovery blob; a KRA recovers the key with its card,
# offline, into a PFX that openssl opens and that decrypts the file.
# Every result is checked with openssl.
#
# Output goes to $KEYWARDEN_DEMO_DIR (default: a new directory under /tmp).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
step() { printf '\n== %s\n' "$*"; }

step "Installing packages and building"
"$root/deploy/install-deps.sh"
"$root/deploy/build.sh"
kw="$root/build/cli/keywarden"

work=${KEYWARDEN_DEMO_DIR:-$(mktemp -d /tmp/keywarden-demo-XXXXXX)}
mkdir -p "$work"
step "Making SoftHSM2 tokens in $work/hsm"
"$root/softhsm-fixtures/make-tokens.sh" "$work/hsm"
# shellcheck disable=SC1091
. "$work/hsm/env"
"$kw" token list

step "Key ceremony from one reviewed file: CA key, root, three KRA cards, config, proof"
# One file describes the whole ceremony (deploy/ceremony.example.toml
# documents every key). It holds no PIN: at a real ceremony each token's
# holder types theirs at the prompt. The demo has no one at a terminal, so
# it passes --automation-pin (for tests and CI only, not for production).
cat > "$work/ceremony.toml" <<'TOML'
[ceremony]
name = "keywarden demo root ceremony"
kind = "root"
witnesses = ["Demo Witness (audit)", "Demo Inspector (security)"]
transcript = "ceremony/transcript.json"

[ca]
name = "keywarden Demo CA"
token = "pkcs11:token=keywarden-ca"
key_label = "ca-root-2026"
key_algorithm = "rsa3072"
subject = "CN=keywarden Demo Root CA,O=keywarden demo"
validity_days = 3650
certificate = "ca.pem"

[kra]
key_algorithm = "rsa2048"
validity_days = 730
count = 2

[[kra.card]]
token = "pkcs11:token=kra-card-1"
holder = "KRA 1"
subject = "CN=KRA 1,O=keywarden demo"
certificate = "kra/kra1.pem"

[[kra.card]]
token = "pkcs11:token=kra-card-2"
holder = "KRA 2"
subject = "CN=KRA 2,O=keywarden demo"
certificate = "kra/kra2.pem"

[[kra.card]]
token = "pkcs11:token=kra-card-3"
holder = "KRA 3"
subject = "CN=KRA 3,O=keywarden demo"
certificate = "kra/kra3.pem"

[config]
fragment = "keywarden-ceremony.toml"
hsm_pin_source = "file:hsm/pins/keywarden-ca.pin"
TOML
automation_pins=()
for t in keywarden-ca kra-card-1 kra-card-2 kra-card-3; do
  automation_pins+=(--automation-pin "$t=file:$work/hsm/pins/$t.pin")
done
"$kw" ceremony run "$work/ceremony.toml" "${automation_pins[@]}"
"$kw" ceremony verify "$work/ceremony/transcript.json" --ca-cert "$work/ca.pem"

step "Independent checks"
echo "-- openssl verify: the root, and the KRA certificates it issued"
openssl verify -CAfile "$work/ca.pem" "$work/ca.pem" "$work"/kra/kra{1,2,3}.pem
echo "-- openssl x509"
openssl x509 -in "$work/ca.pem" -noout -subject -issuer -dates -ext basicConstraints,keyUsage
openssl x509 -in "$work/kra/kra1.pem" -noout -subject -ext keyUsage,extendedKeyUsage
echo "-- sha256sum: the outputs are those the signed transcript records"
python3 -c 'import json,sys; [print(o["sha256"] + "  " + o["path"]) for o in
  json.load(open(sys.argv[1]))["transcript"]["outputs"]]' "$work/ceremony/transcript.json" |
  (cd "$work/ceremony" && sha256sum -c -)
echo "-- pkcs11-tool: the private keys are on the token and the cards, never extractable"
pkcs11-tool --module "$KEYWARDEN_PKCS11_MODULE" --token-label keywarden-ca --login \
  --pin "$(cat "$work/hsm/pins/keywarden-ca.pin")" --list-objects --type privkey
pkcs11-tool --module "$KEYWARDEN_PKCS11_MODULE" --token-label kra-card-1 --login \
  --pin "$(cat "$work/hsm/pins/kra-card-1.pin")" --list-objects
echo "-- the ceremony refuses to run twice (its outputs exist, its key labels are taken)"
if "$kw" ceremony run "$work/ceremony.toml" "${automation_pins[@]}"; then
  echo "demo: the ceremony ran a second time" >&2
  exit 1
fi

step "TLS for the daemon: a software TLS CA, the server and one client per role"
tls="$work/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=keywarden demo TLS CA" -keyout "$tls/tls-ca.key" -out "$tls/tls-ca.pem" 2>/dev/null
issue_tls() {  # name subject extensions
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$tls/$1.key" -out "$tls/$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$tls/$1.ext"
  openssl x509 -req -in "$tls/$1.csr" -CA "$tls/tls-ca.pem" -CAkey "$tls/tls-ca.key" \
    -CAcreateserial -days 30 -extfile "$tls/$1.ext" -out "$tls/$1.pem" 2>/dev/null
}
issue_tls server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
for who in alice officer auditor admin kra; do
  issue_tls "$who" "/O=keywarden demo/CN=$who" "extendedKeyUsage=clientAuth"
done
# The TLS CA's CRL, made with openssl ca: keywardend checks every call
# against it (and against this CA's own revocations, live).
cat > "$tls/ca.cnf" <<CNF
[ca]
default_ca = tls
[tls]
database = $tls/index.txt
crlnumber = $tls/crlnumber
default_md = sha256
default_crl_days = 7
CNF
: > "$tls/index.txt"
echo 01 > "$tls/crlnumber"
tls_crl() {
  openssl ca -config "$tls/ca.cnf" -keyfile "$tls/tls-ca.key" -cert "$tls/tls-ca.pem" \
    -gencrl -out "$tls/tls-ca.crl.new" 2>/dev/null
  mv "$tls/tls-ca.crl.new" "$tls/tls-ca.crl"
}
tls_crl
echo "TLS CA, its CRL, server and client certificates in $tls"

step "Starting keywardend (SQLite, SoftHSM2, mutual TLS on 127.0.0.1)"
# The publication listener's port goes into every certificate's URLs, so it
# is fixed before the daemon starts: a free one, asked of the kernel.
pub_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pub="http://127.0.0.1:$pub_port"
# [ca], [hsm] and [kra] are the ceremony's fragment, as written.
cp "$work/keywarden-ceremony.toml" "$work/keywarden.toml"
cat >> "$work/keywarden.toml" <<TOML

[database]
path = "ca.db"

[server]
listen = "127.0.0.1:0"
tls_certificate = "tls/server.pem"
tls_key = "tls/server.key"
client_ca = ["tls/tls-ca.pem"]
client_crls = ["tls/tls-ca.crl"]

# Where relying parties find the CRL and the CA certificate: written into
# every certificate, served by keywardend itself over plain HTTP.
[publication]
listen = "127.0.0.1:$pub_port"
crl_urls = ["$pub/pki/demo-ca.crl"]
ca_issuers_urls = ["$pub/pki/demo-ca.crt"]

# Each role: a subject *and* the client CA that must have issued it.
[[role]]
principal = "CN=alice,O=keywarden demo"
issuer = "tls/tls-ca.pem"
roles = ["enrollee"]
[[role]]
principal = "CN=officer,O=keywarden demo"
issuer = "tls/tls-ca.pem"
roles = ["certificate-manager"]
[[role]]
principal = "CN=auditor,O=keywarden demo"
issuer = "tls/tls-ca.pem"
roles = ["auditor"]
[[role]]
principal = "CN=admin,O=keywarden demo"
issuer = "tls/tls-ca.pem"
roles = ["ca-administrator"]
[[role]]
principal = "CN=kra,O=keywarden demo"
issuer = "tls/tls-ca.pem"
roles = ["enrollee"]

[[template]]
name = "KeyRecoveryAgent"
key_usage = ["keyEncipherment"]
extended_key_usage = ["1.3.6.1.4.1.311.21.6"]
validity = "730d"
# A KRA template has no default enrollees: only the KRAs' principal.
enrollees = ["CN=kra,O=keywarden demo"]

[[template]]
name = "ArchivalUser"
key_usage = ["keyEncipherment"]
extended_key_usage = ["emailProtection"]
archival = "required"
subject = "principal"

[[template]]
name = "User"
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["clientAuth", "emailProtection"]
validity = "365d"
enrollees = ["enrollee"]

[[template]]
name = "PendingUser"
extended_key_usage = ["clientAuth"]
pend = true
enrollees = ["enrollee"]
TOML
daemon=
start_daemon() {
  rm -f "$work/port"
  "$root/build/service/keywardend" --config "$work/keywarden.toml" --port-file "$work/port" \
    >> "$work/keywardend.log" 2>&1 &
  daemon=$!
  for _ in $(seq 1 200); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || { cat "$work/keywardend.log"; echo "demo: keywardend did not start" >&2; exit 1; }
  export KEYWARDEN_SERVER="127.0.0.1:$(cat "$work/port")"
}
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT
start_daemon
cat "$work/keywardend.log"
export KEYWARDEN_SERVER_CA="$tls/tls-ca.pem" KEYWARDEN_SERVER_NAME=localhost
as() { local who=$1; shift; "$kw" --client-cert "$tls/$who.pem" --client-key "$tls/$who.key" "$@"; }

step "Exchange certificate (what clients encrypt archived keys to), checked against the CA"
as alice ca xchg --out "$work/xchg.pem"
openssl verify -CAfile "$work/ca.pem" "$work/xchg.pem"
openssl x509 -in "$work/xchg.pem" -noout -subject -ext keyUsage,extendedKeyUsage

step "alice enrols (PKCS#10 made by openssl req)"
openssl req -new -newkey rsa:2048 -nodes -subj "/O=keywarden demo/CN=alice" \
  -keyout "$work/alice.key" -out "$work/alice.csr" 2>/dev/null
as alice submit "$work/alice.csr" --template User --out "$work/alice.pem"
openssl verify -CAfile "$work/ca.pem" "$work/alice.pem"

step "alice tries to enrol a certificate naming the officer: refused and audited"
openssl req -new -newkey rsa:2048 -nodes -subj "/O=keywarden demo/CN=officer" \
  -keyout "$work/forged.key" -out "$work/forged.csr" 2>/dev/null
if as alice submit "$work/forged.csr" --template User --out "$work/forged.pem"; then
  echo "demo: an enrollee got a certificate naming the Certificate Manager" >&2
  exit 1
fi
echo "-- and the KRA template is not hers to ask for"
if as alice submit "$work/forged.csr" --template KeyRecoveryAgent; then
  echo "demo: an enrollee enrolled for the KRA template" >&2
  exit 1
fi

step "A request that waits for a Certificate Manager"
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=alice laptop" \
  -keyout "$work/laptop.key" -out "$work/laptop.csr" 2>/dev/null
pending_id=$(as alice --json submit "$work/laptop.csr" --template PendingUser |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["request_id"])')
as officer officer list --pending
as officer officer approve "$pending_id" --out "$work/laptop.pem"
openssl verify -CAfile "$work/ca.pem" "$work/laptop.pem"

step "Published revocation: the URLs in alice's certificate, the CRL fetched from them"
openssl x509 -in "$work/alice.pem" -noout -ext crlDistributionPoints,authorityInfoAccess
curl -sS -D - -o "$work/published.crl" "$pub/pki/demo-ca.crl" | grep -iE '^(HTTP|content-type|last-modified|expires)'
openssl crl -inform DER -in "$work/published.crl" -noout -issuer -lastupdate -nextupdate
# openssl downloads the CRL from the certificate's distribution point itself.
openssl verify -crl_check -crl_download -CAfile "$work/ca.pem" "$work/alice.pem"

step "A certificateHold, and its release (certutil -revoke SERIAL Unrevoke)"
serial=$(openssl x509 -in "$work/alice.pem" -noout -serial | cut -d= -f2)
as officer officer revoke "$serial" --reason certificateHold
if openssl verify -crl_check -crl_download -CAfile "$work/ca.pem" "$work/alice.pem"; then
  echo "demo: a held certificate passed the CRL check" >&2
  exit 1
fi
as officer officer unrevoke "$serial"
openssl verify -crl_check -crl_download -CAfile "$work/ca.pem" "$work/alice.pem"

step "The officer revokes alice's first certificate; the CRL says so"
serial=$(openssl x509 -in "$work/alice.pem" -noout -serial | cut -d= -f2)
as officer officer revoke "$serial" --reason keyCompromise
as alice ca crl --out "$work/ca.crl"
if openssl verify -crl_check -CAfile "$work/ca.pem" -CRLfile "$work/ca.crl" "$work/alice.pem"; then
  echo "demo: a revoked certificate passed the CRL check" >&2
  exit 1
fi
openssl verify -crl_check -CAfile "$work/ca.pem" -CRLfile "$work/ca.crl" "$work/laptop.pem"

step "The Key Recovery Agents from the ceremony (2 of 3 per archived key)"
as admin kra

step "alice enrols with key archival: her new key goes to the CA encrypted to its exchange key"
as alice request --template ArchivalUser --cert-out "$work/alice-enc.pem" \
  --key-out "$work/alice-enc.key"
openssl verify -CAfile "$work/ca.pem" "$work/alice-enc.pem"
echo "The quarterly numbers, for alice only." > "$work/secret.txt"
openssl cms -encrypt -aes256 -in "$work/secret.txt" -out "$work/secret.p7m" "$work/alice-enc.pem"
echo "-- alice loses her key"
rm -f "$work/alice-enc.key"

step "The Certificate Manager finds the archived key and retrieves the recovery blob"
as officer getkey alice
as officer getkey alice "$work/alice.rec"
openssl cms -verify -binary -purpose any -inform DER -in "$work/alice.rec" \
  -CAfile "$work/ca.pem" -out /dev/null
echo "-- the blob is encrypted to KRAs: the Certificate Manager cannot read it"

step "A Key Recovery Agent recovers the key with its card, offline (no connection to the CA)"
recovered=
for n in 1 2 3; do
  if env -u KEYWARDEN_SERVER "$kw" recoverkey --card "pkcs11:token=kra-card-$n" \
    --pin-source "file:$work/hsm/pins/kra-card-$n.pin" --ca-cert "$work/ca.pem" \
    -p "demo pfx password" "$work/alice.rec" "$work/alice-recovered.pfx"; then
    recovered=$n
    break
  fi
  echo "-- (card $n holds a KRA this key was not encrypted to)"
done
[ -n "$recovered" ] || { echo "demo: no KRA card recovered the key" >&2; exit 1; }

step "Checking the PFX with openssl"
openssl pkcs12 -info -in "$work/alice-recovered.pfx" -passin "pass:demo pfx password" \
  -noout
openssl pkcs12 -in "$work/alice-recovered.pfx" -passin "pass:demo pfx password" -nocerts \
  -nodes -out "$work/alice-recovered.key" 2>/dev/null
[ "$(openssl x509 -in "$work/alice-enc.pem" -noout -modulus)" = \
  "$(openssl rsa -in "$work/alice-recovered.key" -noout -modulus)" ] ||
  { echo "demo: the recovered key does not match the certificate" >&2; exit 1; }
echo "-- the recovered key matches alice's certificate"
openssl cms -decrypt -in "$work/secret.p7m" -inkey "$work/alice-recovered.key" \
  -recip "$work/alice-enc.pem"

step "Separation of duties: alice may not act as an officer"
if as alice officer list; then echo "demo: an enrollee listed requests" >&2; exit 1; fi

step "Revocation at the door: the KRAs' TLS certificate goes on the TLS CA's CRL"
as kra ca cert >/dev/null
openssl ca -config "$tls/ca.cnf" -keyfile "$tls/tls-ca.key" -cert "$tls/tls-ca.pem" \
  -revoke "$tls/kra.pem" -crl_reason keyCompromise 2>/dev/null
tls_crl
sleep 2  # keywardend notices a changed CRL file within a second; no restart, no signal
if as kra ca cert >/dev/null; then
  echo "demo: a revoked client certificate was still served" >&2
  exit 1
fi

step "The auditor checks the hash-chained audit log"
as auditor audit verify
as auditor audit read --limit 100 | tail -n 12

step "Done: everything is in $work"
