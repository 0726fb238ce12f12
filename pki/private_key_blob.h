// Private keys as key archival carries them.
//
// A Windows client encrypts its new key to the CA exchange certificate as a
// CAPI PRIVATEKEYBLOB (shared/vectors/windows-key-archival/README.md), all
// fields little-endian:
//
//   BLOBHEADER  bType 0x07, bVersion 0x02, reserved 0 (u16), aiKeyAlg (u32)
//   RSAPUBKEY   magic "RSA2", bitlen (u32), pubexp (u32)
//   modulus (bitlen/8), prime1, prime2, exponent1, exponent2,
//   coefficient (bitlen/16 each), privateExponent (bitlen/8)
//
// Other clients may send a PKCS#8 PrivateKeyInfo instead. Only RSA keys are
// accepted either way: the archival protocol is RSA-only.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"

namespace keywarden::pki {

inline constexpr uint32_t kCalgRsaKeyx = 0x0000A400;  // AT_KEYEXCHANGE
inline constexpr uint32_t kCalgRsaSign = 0x00002400;  // AT_SIGNATURE

// What the blob's aiKeyAlg says the key is for; the values are the aiKeyAlg.
enum class KeySpec : uint32_t {
  kExchange = kCalgRsaKeyx,
  kSignature = kCalgRsaSign,
};

inline constexpr size_t kPrivateKeyBlobHeaderSize = 20;  // BLOBHEADER + RSAPUBKEY

// Total size of an RSA PRIVATEKEYBLOB for a `bitlen`-bit key (bitlen a
// multiple of 16): 1172 for 2048 bits.
constexpr size_t PrivateKeyBlobSize(uint32_t bitlen) {
  return kPrivateKeyBlobHeaderSize + size_t{bitlen} / 8 * 2 + size_t{bitlen} / 16 * 5;
}

// Parses an RSA PRIVATEKEYBLOB strictly (every header field, the exact
// length, no trailing bytes) and checks that its numbers are one consistent
// key: n = p*q, e*d = 1 mod lcm(p-1, q-1), exponent1/2 = d mod (p-1)/(q-1),
// coefficient = prime2^-1 mod prime1. prime1 may be smaller than prime2, as
// Windows sometimes writes it. `spec_out` (may be null) receives the key spec.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ParsePrivateKeyBlob(std::span<const uint8_t> blob,
                                                              KeySpec* spec_out);

// The reverse, for clients and round-trip tests. `ai_key_alg` must be
// kCalgRsaKeyx or kCalgRsaSign. Refuses non-RSA keys, keys whose private
// numbers cannot be read (token keys), and keys the format cannot hold.
absl::StatusOr<hsm::SecretBytes> SerializePrivateKeyBlob(EVP_PKEY* rsa_private,
                                                         uint32_t ai_key_alg = kCalgRsaKeyx);

// Decrypted archival plaintext: a PRIVATEKEYBLOB or a DER PKCS#8
// PrivateKeyInfo. `was_blob` and `ai_key_alg` (either may be null) say which
// it was and, for a blob, its aiKeyAlg (0 for PKCS#8). The key must be RSA
// and, for PKCS#8, pass the same consistency checks as a blob's numbers
// (OpenSSL's full key-pair check for a multi-prime key).
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ParsePrivateKeyPlaintext(std::span<const uint8_t> data,
                                                                   bool* was_blob,
                                                                   uint32_t* ai_key_alg);

// DER PKCS#8 PrivateKeyInfo of a software key.
absl::StatusOr<hsm::SecretBytes> ToPkcs8(EVP_PKEY* key);

// Checks that an RSA private key's numbers are one consistent key, as for
// a PRIVATEKEYBLOB above (n = p*q, e*d = 1 mod lcm(p-1, q-1), the CRT
// values, a Fermat test of each prime; OpenSSL's key-pair check for a
// multi-prime key). The error, prefixed with `what`, names the wrong part.
absl::Status CheckRsaKeyConsistent(EVP_PKEY* key, std::string_view what);

// Key archival's key verification: `public_key` (from the request) must be
// the public half of the RSA `private_key`, and the private key must really
// decrypt what the public key encrypts (32 random bytes).
absl::Status CheckKeyPairMatches(EVP_PKEY* private_key, EVP_PKEY* public_key);

}  // namespace keywarden::pki
