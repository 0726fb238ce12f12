#!/usr/bin/env bash
# Creates throwaway SoftHSM2 tokens in DIR, never touching the system token
# directory:
#   DIR/softhsm2.conf      private SoftHSM2 config (export SOFTHSM2_CONF=...)
#   DIR/tokens/            token store
#   DIR/pins/LABEL.pin     user PIN of each token (mode 600)
#   DIR/env                shell lines to source: SOFTHSM2_CONF, KEYWARDEN_PKCS11_MODULE
#
# Usage: make-tokens.sh DIR [LABEL:SO_PIN:USER_PIN ...]
# Without token arguments it makes the full set: the CA HSM token and five
# KRA smart cards (see README.md in this folder for labels and PINs).
# Tokens are found later by label (or serial), never by slot number:
# SoftHSM2 renumbers slots after every --init-token.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [LABEL:SO_PIN:USER_PIN ...]" >&2
  exit 2
fi
dir=$1
shift
tokens=("$@")
if [ ${#tokens[@]} -eq 0 ]; then
  tokens=(
    "keywarden-ca:ca-so-pin-1:ca-user-pin-1"
    "kra-card-1:kra1-so-pin:kra1-user-pin"
    "kra-card-2:kra2-so-pin:kra2-user-pin"
    "kra-card-3:kra3-so-pin:kra3-user-pin"
    "kra-card-4:kra4-so-pin:kra4-user-pin"
    "kra-card-5:kra5-so-pin:kra5-user-pin"
  )
fi

module=${KEYWARDEN_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
command -v softhsm2-util >/dev/null || { echo "make-tokens: softhsm2-util not found (deploy/install-deps.sh installs it)" >&2; exit 1; }
[ -f "$module" ] || { echo "make-tokens: PKCS#11 module $module not found" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -e "$dir/tokens" ] && [ -n "$(ls -A "$dir/tokens" 2>/dev/null)" ]; then
  echo "make-tokens: $dir/tokens already holds tokens; refusing to overwrite" >&2
  exit 1
fi
mkdir -p "$dir/tokens" "$dir/pins"
chmod 700 "$dir/tokens" "$dir/pins"
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"

for spec in "${tokens[@]}"; do
  IFS=: read -r label so_pin user_pin <<<"$spec"
  if [ -z "$label" ] || [ -z "$so_pin" ] || [ -z "$user_pin" ]; then
    echo "make-tokens: token spec \"$spec\" is not LABEL:SO_PIN:USER_PIN" >&2
    exit 2
  fi
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
  (umask 077 && printf '%s\n' "$user_pin" > "$dir/pins/$label.pin")
done

cat > "$dir/env" <<ENV
export SOFTHSM2_CONF=$dir/softhsm2.conf
export KEYWARDEN_PKCS11_MODULE=$module
ENV
echo "make-tokens: ${#tokens[@]} token(s) in $dir (source $dir/env)"
