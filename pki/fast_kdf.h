// PBKDF2-HMAC-SHA256 and the PKCS#12 key derivation (RFC 7292 B.2) with
// SHA-256, computed over precomputed SHA-256 states, for writing PFX files.
//
// Why: a PFX (pki/pkcs12.h) costs three password derivations of 10000
// iterations (key bag, certificate bag, MAC), and OpenSSL 3.0's PBKDF2
// copies an HMAC context (three provider allocations) per iteration; the
// same function over the raw SHA-256 states is ~2.5-3 × faster. The
// results are the same numbers (tests/pki/fast_kdf_test.cc compares them
// with OpenSSL's for many inputs and with published vectors); the file
// format, iteration counts and ciphers do not change.
//
// They reach OpenSSL's PKCS#12 code as a provider ("keywarden-kdf",
// offering "PBKDF2" and "PKCS12KDF" for SHA-256 only) in a library context
// of its own next to OpenSSL's default provider: passing FastKdfContext()
// and kFastKdfProperties to the PKCS12_*_ex functions makes them derive
// here and do everything else (ciphers, HMAC, random salts) in the default
// provider. The default library context is never changed.
#pragma once

#include <cstdint>
#include <span>

#include "hsm/ossl.h"

namespace keywarden::pki {

// Prefer (not require) this module's KDFs; every other algorithm still
// comes from the default provider.
inline constexpr char kFastKdfProperties[] = "?keywarden.kdf=fast";

// The library context described above, made once; null if it could not be
// made (callers then use OpenSSL's default context).
OSSL_LIB_CTX* FastKdfContext();

// How many derivations the provider has run (for tests: proof that a PFX
// was really derived here).
uint64_t FastKdfDerivations();

// PBKDF2 (RFC 8018 5.2) with HMAC-SHA256. `iterations` >= 1.
bool Pbkdf2HmacSha256(std::span<const uint8_t> password, std::span<const uint8_t> salt,
                      uint64_t iterations, std::span<uint8_t> out);

// RFC 7292 appendix B.2 with SHA-256; `password` is already the BMPString
// with its two zero bytes (as OpenSSL passes it), `id` 1 (key), 2 (IV) or 3
// (MAC key).
bool Pkcs12KdfSha256(std::span<const uint8_t> password, std::span<const uint8_t> salt, int id,
                     uint64_t iterations, std::span<uint8_t> out);

}  // namespace keywarden::pki
