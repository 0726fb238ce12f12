#!/usr/bin/env bash
# The main job end to end on the embedded default, from a fresh Debian 12
# machine: installs the packages, builds, makes SoftHSM2 tokens (the CA HSM
# and three KRA cards), and runs a key ceremony whose results are checked
# with independent tools.
#
# Today the demo covers the HSM layer: the CA key is generated on the token
# and the root certificate is signed there through keywarden's OpenSSL
# provider. Enrollment with archival, blob retrieval and KRA recovery join
# this same script as the daemon lands.
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

step "Key ceremony: CA key on the HSM, self-signed root through the provider"
"$kw" ceremony root \
  --token "pkcs11:token=keywarden-ca" \
  --pin-source "file:$work/hsm/pins/keywarden-ca.pin" \
  --key-label ca-root-2026 --key-algorithm rsa3072 \
  --subject "CN=keywarden Demo Root CA,O=keywarden demo" \
  --days 3650 --out "$work/ca.pem"

step "Independent checks"
echo "-- openssl verify"
openssl verify -CAfile "$work/ca.pem" "$work/ca.pem"
echo "-- openssl x509"
openssl x509 -in "$work/ca.pem" -noout -subject -issuer -dates -ext basicConstraints,keyUsage
echo "-- pkcs11-tool: the private key is on the token, sensitive and never extractable"
pkcs11-tool --module "$KEYWARDEN_PKCS11_MODULE" --token-label keywarden-ca --login \
  --pin "$(cat "$work/hsm/pins/keywarden-ca.pin")" --list-objects --type privkey
echo "-- the root key refuses to be made twice"
if "$kw" ceremony root --token "pkcs11:token=keywarden-ca" \
  --pin-source "file:$work/hsm/pins/keywarden-ca.pin" --key-label ca-root-2026 \
  --subject "CN=again" --out "$work/again.pem"; then
  echo "demo: a second key with the same label was created" >&2
  exit 1
fi

step "Done: everything is in $work"
