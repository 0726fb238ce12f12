// CMS EnvelopedData for archived keys (ARCHITECTURE.md §4, seed: "Key
// Encryption"). The content is encrypted and the content-encryption key
// wrapped on the HSM (hsm::SessionKey); this file only assembles the DER
// around what the token produced: version 0, one KeyTransRecipientInfo
// (v0, issuerAndSerialNumber) per KRA certificate, DES-EDE3-CBC or
// AES-256-CBC content. `openssl cms -decrypt` with a KRA key reads it.
#pragma once

#include <openssl/cms.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"

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
// `content_type`: the encryptedContentInfo's contentType (id-data unless
// the content is a keywarden structure, pki/threshold.h).
inline constexpr char kIdDataOid[] = "1.2.840.113549.1.7.1";
absl::StatusOr<std::vector<uint8_t>> BuildEnvelopedData(
    const std::vector<KeyTransRecipient>& recipients, const EncryptedContent& content,
    const char* content_type = kIdDataOid);

// The same ContentInfo around an encryptedContentInfo given whole (its DER
// TLV, kept byte for byte): KRA rollover (pki/rewrap.h) replaces only the
// recipients of an archive.
absl::StatusOr<std::vector<uint8_t>> BuildEnvelopedDataAround(
    const std::vector<KeyTransRecipient>& recipients,
    std::span<const uint8_t> encrypted_content_info);

// A DER CMS ContentInfo read into `libctx` (whose providers, chosen by
// `propq`, then do its cryptography); nullptr if it does not parse. d2i
// frees the object it was given when parsing fails, so the pointer is
// only owned again after the call. `consumed`: the bytes it took.
ossl::UniquePtr<CMS_ContentInfo> ReadContentInfo(std::span<const uint8_t> der, OSSL_LIB_CTX* libctx,
                                                 const char* propq, size_t* consumed = nullptr);

// The requester's encrypted private key in a Windows archival request (the
// CMC attribute 1.3.6.1.4.1.311.21.13; seed: "Key Archival"): a DER
// ContentInfo of CMS EnvelopedData to the CA's exchange certificate. All of
// it comes from the client. The archiver (service/archival) finds the
// exchange certificate it names and decrypts with that key on the token;
// the fuzzer runs the same steps with a software key.
class ClientEnvelope {
 public:
  // The whole DER must be one ContentInfo of type envelopedData.
  static absl::StatusOr<ClientEnvelope> Parse(std::span<const uint8_t> der, OSSL_LIB_CTX* libctx);

  // "ISSUER serial HEX" of each key-transport recipient, for messages.
  const std::vector<std::string>& recipients() const { return recipients_; }
  // The first of `certificates` that a key-transport recipient names by
  // issuer and serial (or subject key identifier).
  std::optional<size_t> Match(std::span<X509* const> certificates) const;
  // Unwraps the content-encryption key with `key` (the private key of the
  // matched `certificate`) and decrypts the content into wiped memory.
  // OpenSSL does not say whether the key transport or the content failed;
  // the caller tells a token fault from bad data.
  absl::StatusOr<hsm::SecretBytes> Decrypt(EVP_PKEY* key, X509* certificate) const;

 private:
  ossl::UniquePtr<CMS_ContentInfo> cms_;
  std::vector<std::string> recipients_;
};

}  // namespace keywarden::pki
