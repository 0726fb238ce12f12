// Public keys as requests and certificates carry them (SubjectPublicKeyInfo),
// read in the one encoding keywarden accepts for each key.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

// The key in `spki`, a whole SubjectPublicKeyInfo element, which must be
// the one encoding of that key. A key is looked up by the hash of its
// encoding, so a second encoding of the same key would be a second key to
// the one-key-one-owner check. The one encoding is DER and, for an EC key,
// a named curve with an uncompressed point (RFC 5480 2.1.1 and 2.2:
// specified curves are not used in PKIX; the uncompressed form is the one
// every implementation supports). OpenSSL keeps a compressed or hybrid point
// and explicit curve parameters when it re-encodes a key, and decodes BER
// inside a key, so its own DER of a decoded key does not make encodings
// unique.
//
// RSA and EC keys are read from their parts (modulus and exponent; curve
// and point), which is what OpenSSL 3.0's decoders do at several times the
// cost; the bytes must then equal the DER written from those parts. Other
// key types are decoded by OpenSSL and must equal its DER of the key.
//
// INVALID_ARGUMENT says what is wrong, as a phrase about the key: "is not in
// DER", "is not an uncompressed EC point (...)", "does not name its curve
// (...)", "is not a public key OpenSSL reads".
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadPublicKey(std::span<const uint8_t> spki);

// Sets `to` (a certificate's or a request's SubjectPublicKeyInfo) to copies
// of `algorithm` (OID and parameters) and the key `bits`, without decoding
// or encoding a key. False if `bits` is empty or a copy fails.
bool SetSpkiParts(X509_PUBKEY* to, const X509_ALGOR* algorithm, std::span<const uint8_t> bits);

}  // namespace keywarden::pki
