// CMC Full PKI Responses (RFC 5272 §3.2.2) as a Windows CA answers a
// key-archival enrollment (seed, Appendix A "Response"):
//
//   ContentInfo(signedData) -> SignedData signed by the CA key,
//     eContentType id-cct-PKIResponse (1.3.6.1.5.5.7.12.3)
//     PKIResponse.controlSequence:
//       { bodyPartID 1, id-cmc-statusInfo, CMCStatusInfo { status, bodyList
//         { request body part }, statusString } }
//       { bodyPartID 2, 1.3.6.1.4.1.311.10.10.1 (CMC add-attributes),
//         { dataReference 0, certReferences { request body part },
//           { 1.3.6.1.4.1.311.21.17 = SHA-1 of the issued certificate,
//             1.3.6.1.4.1.311.21.21 = the request's encrypted-key hash } } }
//     cmsSequence, otherMsgSequence: empty
//     certificates: the issued certificate and the CA chain
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

inline constexpr char kOidPkiResponse[] = "1.3.6.1.5.5.7.12.3";
inline constexpr char kOidCmcStatusInfo[] = "1.3.6.1.5.5.7.7.1";
inline constexpr char kOidIssuedCertHash[] = "1.3.6.1.4.1.311.21.17";

// CMCStatus (RFC 5272): success, failed, pending.
enum class CmcStatus { kSuccess = 0, kFailed = 2, kPending = 3 };

struct CmcResponseSpec {
  CmcStatus status = CmcStatus::kSuccess;
  int64_t request_body_part = 1;            // the PKCS#10's bodyPartID in the request
  std::string status_string;                // "Issued", "Taken Under Submission", the denial text
  int fail_info = -1;                       // CMCFailInfo for kFailed (2 = badRequest), -1: none
  X509* issued = nullptr;                   // the certificate, for 1.3.6.1.4.1.311.21.17
  std::vector<uint8_t> encrypted_key_hash;  // 1.3.6.1.4.1.311.21.21, when archived
  std::vector<X509*> certificates;          // issued certificate first, then the CA chain (the
                                            // signer's own certificate is always included)
};

// The DER ContentInfo, signed with `ca_key` (a token key through the
// provider: pass its libctx and property query) for `ca_certificate`. The
// response is verified with VerifyCmcResponse before it is returned; one
// that does not verify is an INTERNAL error (a CA-side fault), never output.
// `ca_software` (may be null): a copy of `ca_certificate` decoded in
// software, as VerifyCmcResponse takes it.
absl::StatusOr<std::vector<uint8_t>> BuildCmcResponse(OSSL_LIB_CTX* libctx, const char* propq,
                                                      EVP_PKEY* ca_key, X509* ca_certificate,
                                                      const CmcResponseSpec& spec,
                                                      X509* ca_software = nullptr);

// Checks a CMC Full PKI Response in software, as a client would: a DER CMS
// SignedData of id-cct-PKIResponse with exactly one signer, whose signature
// (over the signed attributes, and the content's messageDigest) verifies
// with the public key of `ca_certificate`, the only signer accepted. The
// error says what is wrong (DATA_LOSS for a signature that does not verify).
// The signature is checked with a copy of `ca_certificate` decoded afresh
// from its DER, or with `ca_software` when given: a copy the caller decoded
// the same way (pki::SoftwareCopy) and keeps, so that a CA making many
// responses does not decode its own certificate for each.
absl::Status VerifyCmcResponse(std::span<const uint8_t> der, X509* ca_certificate,
                               X509* ca_software = nullptr);

// certreq -accept's check: VerifyCmcResponse, and the response carries
// `issued` (DER) among its certificates. The error names what is missing.
absl::Status VerifyCmcResponseCarries(std::span<const uint8_t> der, X509* ca_certificate,
                                      std::span<const uint8_t> issued);

}  // namespace keywarden::pki
