// CMS EnvelopedData for archived keys (ARCHITECTURE.md §4, seed: "Key
// Encryption"). The content is encrypted and the content-encryption key
// wrapped on the HSM (hsm::SessionKey); this file only assembles the DER
// around what the token produced: version 0, one KeyTransRecipientInfo
// (v0, issuerAndSerialNumber) per KRA certificate, DES-EDE3-CBC or
// AES-256-CBC content. `openssl cms -decrypt` with a KRA key reads it.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

enum class ContentCipher { kDes3Cbc, kAes256Cbc };
enum class KeyTransport { kRsaPkcs1, kRsaOaepSha1 };

struct KeyTransRecipient {
  X509* certificate = nullptr;  // the KRA certificate: issuer and serial are taken from it
  KeyTransport transport = KeyTransport::kRsaPkcs1;
  std::vector<uint8_t> encrypted_key;  // the content-encryption key wrapped to its public key
};

struct EncryptedContent {
  ContentCipher cipher = ContentCipher::kDes3Cbc;
  std::vector<uint8_t> iv;          // 8 bytes (3DES) or 16 (AES)
  std::vector<uint8_t> ciphertext;  // CBC with PKCS#7 padding
};

// The DER ContentInfo { envelopedData, EnvelopedData }. RecipientInfos are
// a DER SET OF, so they are sorted by encoding (the order KRAs were chosen
// in is kept by the caller, e.g. in the database row).
absl::StatusOr<std::vector<uint8_t>> BuildEnvelopedData(
    const std::vector<KeyTransRecipient>& recipients, const EncryptedContent& content);

}  // namespace keywarden::pki
