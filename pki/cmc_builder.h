// The client side of key archival: a CMC Full PKI Request in the layout a
// Windows client sends (pki/cmc.h; shared/vectors/windows-key-archival/):
//
//   ContentInfo(signedData) -> SignedData v3, digestAlgorithms {digest},
//     no certificates, eContentType id-cct-PKIData
//     PKIData.controlSequence: { bodyPartID 2, 1.3.6.1.4.1.311.10.10.1,
//       { dataReference 0, certReferences {1}, attributes {
//           1.3.6.1.4.1.311.21.21 = digest(DER of the 21.13 ContentInfo),
//           [1.3.6.1.4.1.311.21.20 client info] } } }
//     PKIData.reqSequence: [0] { bodyPartID 1, PKCS#10 }
//     cmsSequence, otherMsgSequence: empty
//   SignerInfo v3: sid [0] subjectKeyIdentifier (SHA-1 of the key bits),
//     digestAlgorithm, signedAttrs {contentType, messageDigest},
//     rsaEncryption PKCS#1 v1.5 signature by the request key,
//     unsignedAttrs { 1.3.6.1.4.1.311.21.13 = ContentInfo(envelopedData) }
//
// The envelope holds the private key as a CAPI PRIVATEKEYBLOB
// (AT_KEYEXCHANGE) or PKCS#8, encrypted to the CA exchange certificate:
// DES-EDE3-CBC (Windows) or AES-256-CBC content, the content key wrapped
// with RSA PKCS#1 v1.5 to issuerAndSerialNumber. Everything runs in
// software: the key being archived is a software key by definition.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"
#include "pki/envelope.h"

namespace keywarden::pki {

enum class ArchivedKeyFormat { kPrivateKeyBlob, kPkcs8 };

// The 1.3.6.1.4.1.311.21.20 request client info: SEQUENCE { clientId
// INTEGER, machine, user, process UTF8String }. certreq sends clientId 9.
struct RequestClientInfo {
  int64_t client_id = 9;
  std::string machine;
  std::string user;
  std::string process;
};

struct ArchivalRequestOptions {
  // The PKCS#10 subject; null or empty: an empty subject (the CA takes the
  // requester's name, as for Windows autoenrollment).
  const X509_NAME* subject = nullptr;
  // Template hints in the PKCS#10: a name goes in the v1 extension
  // 1.3.6.1.4.1.311.20.2 and the CertificateTemplate=NAME pair
  // (1.3.6.1.4.1.311.13.2.1); an OID in the v2 extension 1.3.6.1.4.1.311.21.7.
  std::string template_name;
  std::string template_oid;
  // "SHA1" (Windows), "SHA256", "SHA384" or "SHA512": the PKCS#10 and CMS
  // signatures and the 21.21 encrypted-key hash.
  std::string digest = "SHA1";
  ContentCipher cipher = ContentCipher::kDes3Cbc;
  ArchivedKeyFormat key_format = ArchivedKeyFormat::kPrivateKeyBlob;
  std::optional<RequestClientInfo> client_info;
};

// The self-signed PKCS#10 (DER) inside the request: `key`'s public half,
// the template hints, keyUsage digitalSignature+keyEncipherment (critical),
// subjectKeyIdentifier, and the client info attribute when given.
absl::StatusOr<std::vector<uint8_t>> BuildArchivalPkcs10(EVP_PKEY* key,
                                                         const ArchivalRequestOptions& options);

// The DER ContentInfo(envelopedData) carrying `key` (PRIVATEKEYBLOB or
// PKCS#8, per options) encrypted to `exchange_certificate`'s RSA key.
absl::StatusOr<std::vector<uint8_t>> EncryptKeyForArchival(EVP_PKEY* key,
                                                           X509* exchange_certificate,
                                                           const ArchivalRequestOptions& options);

// The whole request (DER). `key` must be an RSA software key whose private
// numbers can be read; `exchange_certificate` must carry an RSA key (check
// it first with VerifyExchangeCertificate, pki/exchange_certificate.h).
// The result is parsed back with ParseCmcRequest before it is returned.
absl::StatusOr<std::vector<uint8_t>> BuildArchivalRequest(EVP_PKEY* key, X509* exchange_certificate,
                                                          const ArchivalRequestOptions& options);

}  // namespace keywarden::pki
