// Threshold archives (issue 17; the format and its security argument are in
// docs/THRESHOLD.md).
//
// With [kra] threshold = k >= 2 an archive is still one CMS EnvelopedData
// (RFC 5652) with the archived key encrypted under a fresh content key, but
// the content key is not wrapped whole to each KRA. It is split into n
// Shamir shares (pki/shamir.h) and each share is encrypted to one KRA, in
// an OtherRecipientInfo (RFC 5652 §6.2.5) of a keywarden type:
//
//   keywarden OBJECT IDENTIFIER ::= { 2 25 56147068238476046464733690741334488612 }
//   id-kw-ori-thresholdShare OBJECT IDENTIFIER ::= { keywarden 1 }
//   id-kw-ct-shareContribution OBJECT IDENTIFIER ::= { keywarden 2 }
//
//   OtherRecipientInfo ::= SEQUENCE {      -- [4] IMPLICIT in RecipientInfo
//     oriType  id-kw-ori-thresholdShare,
//     oriValue ThresholdShare }
//
//   ThresholdShare ::= SEQUENCE {
//     version                INTEGER (1),
//     threshold              INTEGER (2..255),   -- k: shares needed
//     shareCount             INTEGER (2..255),   -- n: shares made (= recipients)
//     shareIndex             INTEGER (1..255),   -- x of this share
//     rid                    IssuerAndSerialNumber,   -- the KRA certificate
//     keyEncryptionAlgorithm AlgorithmIdentifier,     -- rsaEncryption | rsaesOaep
//     encryptedShare         OCTET STRING,            -- the share, RSA-encrypted to the KRA
//     commitment             OCTET STRING (SIZE (32)) }
//
//   commitment = SHA-256("keywarden threshold share v1" || k || n || x || share)
//
// The EnvelopedData has version 3 (RFC 5652 §6.1: ori present), its
// recipients are exactly the n ThresholdShare entries, and its
// encryptedContentInfo is the same as a k = 1 archive's (DES-EDE3-CBC or
// AES-256-CBC over the PKCS#8 or PRIVATEKEYBLOB plaintext).
//
// A KRA that is not the coordinator hands its share over as a contribution:
// a CMS EnvelopedData (version 0, one KeyTransRecipientInfo to the
// coordinator's KRA certificate, AES-256-CBC content) whose content type is
// id-kw-ct-shareContribution and whose content is
//
//   ShareContribution ::= SEQUENCE {
//     version        INTEGER (1),
//     archiveDigest  OCTET STRING (SIZE (32)),  -- SHA-256 of the archive ContentInfo DER
//     shareIndex     INTEGER (1..255),
//     contributor    IssuerAndSerialNumber,     -- the KRA whose share this is
//     share          OCTET STRING }
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"
#include "pki/envelope.h"

namespace keywarden::pki::threshold {

inline constexpr char kKeywardenArc[] = "2.25.56147068238476046464733690741334488612";
inline constexpr char kThresholdShareOid[] = "2.25.56147068238476046464733690741334488612.1";
inline constexpr char kShareContributionOid[] = "2.25.56147068238476046464733690741334488612.2";

using Commitment = std::array<uint8_t, 32>;

Commitment CommitTo(int k, int n, uint8_t index, std::span<const uint8_t> share);

// One share's recipient, for building.
struct ShareRecipient {
  X509* certificate = nullptr;  // the KRA certificate (issuer and serial are taken from it)
  KeyTransport transport = KeyTransport::kRsaPkcs1;
  uint8_t index = 0;
  std::vector<uint8_t> encrypted_share;
  Commitment commitment{};
};

// The DER ContentInfo { envelopedData, EnvelopedData v3 } above. The
// recipients must be n = recipients.size() shares with distinct indexes.
absl::StatusOr<std::vector<uint8_t>> BuildThresholdEnvelopedData(
    int k, const std::vector<ShareRecipient>& recipients, const EncryptedContent& content);

// The same, around an encryptedContentInfo given whole (its DER TLV, kept
// byte for byte): the rewrap of an archive (keywarden kra rewrap).
absl::StatusOr<std::vector<uint8_t>> BuildThresholdEnvelopedDataAround(
    int k, const std::vector<ShareRecipient>& recipients,
    std::span<const uint8_t> encrypted_content_info);

// One share's recipient as read from an archive.
struct ShareEntry {
  uint8_t index = 0;
  std::vector<uint8_t> issuer;  // DER Name
  std::vector<uint8_t> serial;  // DER INTEGER
  KeyTransport transport = KeyTransport::kRsaPkcs1;
  std::vector<uint8_t> encrypted_share;
  Commitment commitment{};

  bool Names(X509* certificate) const;  // issuer and serial are the certificate's
  std::string Describe() const;         // "share 2 (KRA issuer \"CN=…\", serial 0A1B)"
};

struct ThresholdEnvelope {
  int k = 0;
  int n = 0;
  std::vector<ShareEntry> shares;  // in the order of the encoding
  EncryptedContent content;

  const ShareEntry* ByIndex(uint8_t index) const;
};

// True when `der` is a ContentInfo { envelopedData } with at least one
// keywarden ThresholdShare recipient (then ParseThresholdEnvelope decides
// whether it is well formed). Never fails: false for anything else.
bool IsThresholdEnvelope(std::span<const uint8_t> der);

// Strict DER: every field as above; k <= n; n recipients, all threshold
// shares with the same k and n and distinct indexes; no other recipient
// kind. InvalidArgument naming the first thing wrong.
absl::StatusOr<ThresholdEnvelope> ParseThresholdEnvelope(std::span<const uint8_t> der);

// Software encryption of a share to a KRA's public key (no private key is
// involved; the daemon uses its default library context).
absl::StatusOr<std::vector<uint8_t>> EncryptShare(EVP_PKEY* kra_public, KeyTransport transport,
                                                  std::span<const uint8_t> share,
                                                  OSSL_LIB_CTX* libctx = nullptr);
// The share decrypted with a KRA private key (a card key from its
// provider: pass its libctx and properties). DataLoss when it does not
// decrypt or does not match its commitment.
absl::StatusOr<hsm::SecretBytes> DecryptShare(EVP_PKEY* kra_private, const ThresholdEnvelope& env,
                                              const ShareEntry& entry, OSSL_LIB_CTX* libctx,
                                              const char* propq);

// Content encryption under a known content key (software; the key is wiped
// by its owner). `iv` must be the cipher's block size, from the token RNG.
absl::StatusOr<EncryptedContent> EncryptContent(ContentCipher cipher,
                                                std::span<const uint8_t> content_key,
                                                std::span<const uint8_t> iv,
                                                std::span<const uint8_t> plaintext);
absl::StatusOr<hsm::SecretBytes> DecryptContent(const EncryptedContent& content,
                                                std::span<const uint8_t> content_key);
size_t ContentKeyLength(ContentCipher cipher);  // 24 or 32

// A whole threshold archive of `plaintext` (the PKCS#8 key) for `kras`
// (n = kras.size(), share i to kras[i-1]): content key, IV and polynomial
// coefficients all from `random` (the daemon: the token's RNG). Before it
// returns, the first k shares are combined and must give the content key.
struct ArchiveSpec {
  int k = 2;
  ContentCipher cipher = ContentCipher::kDes3Cbc;
  KeyTransport transport = KeyTransport::kRsaPkcs1;
};
absl::StatusOr<std::vector<uint8_t>> MakeThresholdArchive(
    const ArchiveSpec& spec, const std::vector<X509*>& kras, std::span<const uint8_t> plaintext,
    const std::function<absl::Status(std::span<uint8_t>)>& random);

// KRA rollover to a threshold form: `content_key` (combined or unwrapped
// by the rewrapping KRAs, in their wiped memory) split afresh into
// n = kras.size() shares with threshold k (coefficients from `random`: the
// card's C_GenerateRandom), share i encrypted to kras[i-1] with
// `transport`, fresh commitments, around `encrypted_content_info`
// unchanged. Every cyclic window of k shares is combined and must give the
// content key back before this returns.
absl::StatusOr<std::vector<uint8_t>> ResplitContentKey(
    int k, const std::vector<X509*>& kras, KeyTransport transport,
    std::span<const uint8_t> content_key, std::span<const uint8_t> encrypted_content_info,
    const std::function<absl::Status(std::span<uint8_t>)>& random);

// A share handed from a contributing KRA to the coordinator.
struct Contribution {
  std::array<uint8_t, 32> archive_digest{};
  uint8_t index = 0;
  std::vector<uint8_t> contributor_issuer;  // DER Name
  std::vector<uint8_t> contributor_serial;  // DER INTEGER
  hsm::SecretBytes share;
};

std::array<uint8_t, 32> ArchiveDigest(std::span<const uint8_t> archive_der);

// The contribution encrypted to the coordinator's KRA certificate.
absl::StatusOr<std::vector<uint8_t>> SealContribution(const Contribution& contribution,
                                                      X509* coordinator, KeyTransport transport);
// Opens a contribution with the coordinator's private key (its card).
absl::StatusOr<Contribution> OpenContribution(std::span<const uint8_t> der,
                                              EVP_PKEY* coordinator_key, X509* coordinator,
                                              OSSL_LIB_CTX* libctx, const char* propq);
// The ShareContribution content alone (for the fuzzer and tests).
absl::StatusOr<Contribution> ParseContributionContent(std::span<const uint8_t> der);

}  // namespace keywarden::pki::threshold
