// KRA rollover (issue 17 item 3; ARCHITECTURE.md §12): an archive's
// content-encryption key re-encrypted to the CA's current KRAs while the
// encrypted private key stays byte for byte what the CA stored.
//
// An archive (pki/key_archive.h) is a DER ContentInfo { envelopedData,
// EnvelopedData v0 { RecipientInfos, encryptedContentInfo } } with one
// KeyTransRecipientInfo (v0, issuerAndSerialNumber) per KRA. A rewrap keeps
// the encryptedContentInfo TLV unchanged and replaces the RecipientInfos:
// the KRA card (the CLI) builds it, the CA (service) checks it with the
// same parser before storing it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "pki/envelope.h"

namespace keywarden::pki {

// One KeyTransRecipientInfo of an archive.
struct ArchiveRecipient {
  std::vector<uint8_t> issuer;  // DER Name
  std::vector<uint8_t> serial;  // DER INTEGER (whole TLV)
  KeyTransport transport = KeyTransport::kRsaPkcs1;
  std::vector<uint8_t> encrypted_key;
  // Whether issuer and serial are those of `cert`.
  bool Names(X509* cert) const;
  // "issuer serial HEX", for messages.
  std::string Describe() const;
};

struct ArchiveEnvelope {
  std::vector<uint8_t> encrypted_content_info;  // the whole TLV, byte for byte
  ContentCipher cipher = ContentCipher::kDes3Cbc;
  std::vector<ArchiveRecipient> recipients;  // in encoding order
  // A threshold archive (pki/threshold.h: version 3, OtherRecipientInfo
  // shares): parsed no further, `recipients` is empty.
  bool threshold = false;
};

// Strict DER: the whole input is one ContentInfo of type envelopedData,
// EnvelopedData version 0 (or 3 for a threshold archive) without
// originatorInfo or unprotectedAttrs; every RecipientInfo a v0
// KeyTransRecipientInfo (issuerAndSerialNumber; rsaEncryption or rsaesOaep
// with default parameters); the content encrypted with DES-EDE3-CBC or
// AES-256-CBC. INVALID_ARGUMENT naming the part that is wrong.
absl::StatusOr<ArchiveEnvelope> ParseArchiveEnvelope(std::span<const uint8_t> der);

// The archive with the recipients replaced: `encrypted_content_info` is
// copied unchanged (pki::BuildEnvelopedDataAround).
absl::StatusOr<std::vector<uint8_t>> BuildRewrappedEnvelope(
    std::span<const uint8_t> encrypted_content_info,
    const std::vector<KeyTransRecipient>& recipients);

}  // namespace keywarden::pki
