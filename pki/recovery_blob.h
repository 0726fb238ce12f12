// The recovery blob: what a Certificate Manager retrieves (getkey) and a
// Key Recovery Agent decrypts offline (recoverkey). Seed: Appendix A,
// "Recovery BLOB Structure"; ARCHITECTURE.md §5.
//
//   ContentInfo { signedData,
//     SignedData v1
//       digestAlgorithms { <digest> }
//       encapContentInfo { id-data (1.2.840.113549.1.7.1),
//                          OCTET STRING = the stored archive, byte for byte:
//                          DER ContentInfo { envelopedData, EnvelopedData } }
//       certificates: the user certificate and its chain, the KRA
//                     certificates the key is encrypted to, the CA chain
//       SignerInfo v1 (issuerAndSerialNumber of the CA signing certificate)
//         signedAttrs: contentType (id-data), signingTime, messageDigest,
//                      1.3.6.1.4.1.311.21.16 = OCTET STRING(SHA-1 of the DER
//                      user certificate)  -- szOID_ARCHIVED_KEY_CERT_HASH
//         signature by the CA signing key (on the HSM) }
//
// Why id-data: the seed wraps "the encrypted PKCS #7 in the database in
// another (signed) PKCS #7", and MS-CSRA (GetArchivedKey) makes the signed
// content the stored Request_Raw_Archived_Key bytes. A signed message
// whose content type is id-data carries those bytes unchanged, so the
// verified content is exactly the stored EnvelopedData ContentInfo, and
// `openssl cms -verify` writes a file `openssl cms -decrypt` reads.
// ParseRecoveryBlob also accepts eContentType id-envelopedData with either
// the ContentInfo or the bare EnvelopedData as eContent.
#pragma once

#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "pki/threshold.h"

namespace keywarden::pki {

inline constexpr char kArchivedKeyCertHashOid[] = "1.3.6.1.4.1.311.21.16";

struct RecoveryBlobInput {
  // The CA signing key: a token key (hsm::CryptoContext::Load) or software.
  EVP_PKEY* ca_key = nullptr;
  X509* ca_certificate = nullptr;  // the certificate of ca_key
  // Optional: ca_certificate decoded in software (pki::SoftwareCopy), kept
  // by a caller that builds many blobs (keywardend). With it, the blob is
  // checked in its DER before it is returned (the CA signature over the
  // signed attributes with this certificate's key, the signed digest of
  // the content, every certificate against its issuer in the blob) rather
  // than opened whole as a KRA does; if that check does not pass, the full
  // ParseRecoveryBlob decides. Without it, ParseRecoveryBlob against a
  // software copy made per call.
  X509* ca_certificate_software = nullptr;
  std::vector<X509*> ca_chain;  // issuers of ca_certificate towards the root (may be empty)
  X509* user_certificate = nullptr;
  // The user certificate's issuers (may be empty). They must be its real
  // issuers: after a CA key renewal, the old CA certificate. A certificate
  // that names an issuer present in the blob must verify with it.
  std::vector<X509*> user_chain;
  // The KRA certificates the envelope is encrypted to: every RecipientInfo
  // must have one here (NotFound otherwise: the daemon maps it to
  // 0x80092004), and every certificate here must be a recipient.
  std::vector<X509*> kra_certificates;
  // The stored archive: DER ContentInfo { envelopedData, ... } as
  // pki::BuildEnvelopedData makes it.
  std::span<const uint8_t> enveloped_data;
  std::string digest = "SHA256";  // SHA256, SHA384 or SHA512
};

// Signs the recovery blob with input.ca_key in `libctx` (pass the token
// key's CryptoContext libctx and hsm::kTokenKeyProperties for a token
// key). Certificates appearing in several lists are included once. Before
// the DER is returned its CA signature is verified in software (see
// ca_certificate_software; otherwise it is opened with ParseRecoveryBlob,
// trusting input.ca_certificate, exactly as a KRA will): INTERNAL if that
// fails, and nothing is returned.
// InvalidArgument for bad input; NotFound when a recipient of the envelope
// has no certificate in kra_certificates.
absl::StatusOr<std::vector<uint8_t>> BuildRecoveryBlob(OSSL_LIB_CTX* libctx, const char* propq,
                                                       const RecoveryBlobInput& input);

// Why a blob was refused; carried in the status (RecoveryBlobErrorOf) so
// that callers and tests can tell the cases apart without parsing text.
enum class RecoveryBlobError {
  kNone,
  kMalformed,               // not strict DER CMS, or not the structure above
  kBadSignature,            // signature or content digest does not verify: altered
  kCertificateTampered,     // a certificate's signature fails against its issuer
  kUntrustedSigner,         // the signing certificate does not chain to a trust anchor
  kMissingCertHash,         // no (single, 20-byte) 1.3.6.1.4.1.311.21.16 attribute
  kUserCertificateMissing,  // no certificate in the blob has that SHA-1
  kNotEnveloped,            // the signed content is not a CMS EnvelopedData
};
RecoveryBlobError RecoveryBlobErrorOf(const absl::Status& status);
std::string_view RecoveryBlobErrorName(RecoveryBlobError error);  // "bad-signature", ...

// One RecipientInfo of the envelope: a KRA that can decrypt the blob.
struct RecoveryRecipient {
  ossl::UniquePtr<X509_NAME> issuer;  // issuerAndSerialNumber (null for SKI recipients)
  ossl::UniquePtr<ASN1_INTEGER> serial;
  std::vector<uint8_t> subject_key_id;  // for a subjectKeyIdentifier recipient
  std::string key_transport;            // "rsaEncryption", "rsaesOaep", ...
  int share_index = 0;                  // threshold archives: the share this KRA holds
  X509* certificate = nullptr;          // its KRA certificate in the blob, owned by
                                        // RecoveryBlob::kra_certificates; null if absent

  bool Matches(X509* cert) const;  // issuer+serial (or SKI) names `cert`
  // Subject and SHA-1 of the certificate when the blob has it, else the
  // issuer and serial number.
  std::string Describe() const;
};

struct RecoveryBlob {
  ossl::UniquePtr<X509> user_certificate;
  std::vector<ossl::UniquePtr<X509>> user_chain;  // issuers from the blob, nearest first
  std::vector<ossl::UniquePtr<X509>> kra_certificates;
  ossl::UniquePtr<X509> signer;                     // the CA certificate that signed the blob
  std::vector<ossl::UniquePtr<X509>> signer_chain;  // signer's verified path up to the anchor
  std::vector<RecoveryRecipient> recipients;        // in envelope order
  std::vector<uint8_t> enveloped_data;              // DER ContentInfo { envelopedData, ... }
  std::string content_cipher;                       // "des-ede3-cbc", "aes-256-cbc", ...
  std::string digest;                               // the signature's digest, "sha256"
  std::optional<time_t> signing_time;
  // Set for a threshold archive (k >= 2 KRAs needed; pki/threshold.h);
  // then `recipients` lists its shares in the same order.
  std::optional<threshold::ThresholdEnvelope> threshold;
};

struct RecoveryBlobVerifyOptions {
  // Time at which the signer's chain must be valid; 0 = now. Only the CA
  // chain is checked against it: the user and KRA certificates may have
  // expired (old keys are recovered precisely then).
  time_t verify_time = 0;
};

// Verifies and opens a recovery blob: strict DER; one SignerInfo whose
// signature and messageDigest verify; contentType attribute = eContentType;
// the signer certificate chains to one of `trust_anchors` (a root, or any
// CA certificate the operator trusts directly); every certificate whose
// issuer is in the blob or the anchors has a good signature; the 21.16
// hash names a certificate in the blob (the user certificate); the
// content is an EnvelopedData. KRA certificates are not checked for
// validity or revocation: recovery depends on the KRA's private key, not
// on the state of its certificate.
absl::StatusOr<RecoveryBlob> ParseRecoveryBlob(
    std::span<const uint8_t> der, const std::vector<ossl::UniquePtr<X509>>& trust_anchors,
    const RecoveryBlobVerifyOptions& options = {});

// The DER of a blob file: DER as is, or PEM ("PKCS7" or "CMS" label).
absl::StatusOr<std::vector<uint8_t>> RecoveryBlobDer(std::span<const uint8_t> file_bytes);

}  // namespace keywarden::pki
