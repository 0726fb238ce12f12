// keywarden's one error vocabulary: an absl::Status whose code is the gRPC
// code and whose payload carries the seed's HRESULT (certutil shows the same
// numbers), mapped to a gRPC status in exactly one place (server/status.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace keywarden::service {

struct HResult {
  uint32_t code;
  const char* symbol;
  const char* text;  // the Windows message, where it has one
  absl::StatusCode status;
};

namespace hresult {
// Key archival (ARCHITECTURE.md §4).
inline constexpr HResult kKeyArchivalNotConfigured{
    0x8009400a, "CERTSRV_E_KEY_ARCHIVAL_NOT_CONFIGURED",
    "Cannot archive private key. The certification authority is not configured for key archival.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kNoValidKra{
    0x8009400b, "CERTSRV_E_NO_VALID_KRA",
    "Cannot archive private key. No valid key recovery agent is defined for this certification "
    "authority.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kBadRequestKeyArchival{
    0x8009400c, "CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL",
    "The request is incorrectly formatted. The encrypted private key must be in an unauthenticated "
    "attribute in an outermost signature.",
    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kArchivedKeyRequired{
    0x80094804, "CERTSRV_E_ARCHIVED_KEY_REQUIRED",
    "The certificate template requires the private key to be archived, but the request carries "
    "none.",
    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kArchivedKeyUnexpected{
    0x80094810, "CERTSRV_E_ARCHIVED_KEY_UNEXPECTED",
    "The request includes a private key for archival by the server, but key archival is not "
    "enabled for the specified certificate template.",
    absl::StatusCode::kInvalidArgument};
// The CA's token cannot do what archival needs (seed: event 86, "Certificate
// Authority CSP Not Supported for Key Archival Functions"): the CA's side.
inline constexpr HResult kKeysetNotDefined{
    0x80090019, "NTE_KEYSET_NOT_DEF",
    "Certificate Services could not use the provider specified in the registry for encryption "
    "keys. The keyset is not defined.",
    absl::StatusCode::kFailedPrecondition};
// The submitted private key (key verification, seed: "Key Verification").
inline constexpr HResult kNoDecryptCert{
    0x8009200c, "CRYPT_E_NO_DECRYPT_CERT",
    "Cannot find the certificate and private key to use for decryption.",
    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadData{0x80090005, "NTE_BAD_DATA", "Bad Data.",
                                  absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadKey{0x80090003, "NTE_BAD_KEY", "Bad Key.",
                                 absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadKeyType{0x8009000a, "NTE_BAD_TYPE", "Invalid type specified.",
                                     absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadAlgorithm{0x80090008, "NTE_BAD_ALGID", "Invalid algorithm specified.",
                                       absl::StatusCode::kInvalidArgument};
// KRA certificate validation (seed: "Loading KRA Certificates", events 82-85, 98).
inline constexpr HResult kRevocationOffline{
    0x80092013, "CRYPT_E_REVOCATION_OFFLINE",
    "The revocation function was unable to check revocation because the revocation server was "
    "offline.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kRevoked{0x80092010, "CRYPT_E_REVOKED", "The certificate is revoked.",
                                  absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kCertExpired{
    0x800b0101, "CERT_E_EXPIRED",
    "A required certificate is not within its validity period when verifying against the current "
    "system clock or the timestamp in the signed file.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kWrongUsage{0x800b0110, "CERT_E_WRONG_USAGE",
                                     "The certificate is not valid for the requested usage.",
                                     absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kChaining{
    0x800b010a, "CERT_E_CHAINING",
    "A certificate chain could not be built to a trusted root authority.",
    absl::StatusCode::kFailedPrecondition};
// Enrollment and policy.
inline constexpr HResult kUnsupportedCertType{
    0x80094800, "CERTSRV_E_UNSUPPORTED_CERT_TYPE",
    "The requested certificate template is not supported by this CA.",
    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kNoCertType{0x80094801, "CERTSRV_E_NO_CERT_TYPE",
                                     "The request contains no certificate template information.",
                                     absl::StatusCode::kInvalidArgument};
inline constexpr HResult kKeyLength{
    0x80094811, "CERTSRV_E_KEY_LENGTH",
    "The public key does not meet the minimum size required by the specified certificate "
    "template.",
    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadRequestSubject{0x80094001, "CERTSRV_E_BAD_REQUESTSUBJECT",
                                            "The request subject name is invalid or too long.",
                                            absl::StatusCode::kInvalidArgument};
inline constexpr HResult kBadRequestStatus{
    0x80094003, "CERTSRV_E_BAD_REQUESTSTATUS",
    "The request's current status does not allow this operation.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kRoleConflict{
    0x80094008, "CERTSRV_E_ROLECONFLICT",
    "The operation is denied. The user has multiple roles assigned and the certification "
    "authority is configured to enforce role separation.",
    absl::StatusCode::kPermissionDenied};
// At the door (ARCHITECTURE.md §10) and per template.
inline constexpr HResult kCertRevoked{0x800b010c, "CERT_E_REVOKED",
                                      "A certificate was explicitly revoked by its issuer.",
                                      absl::StatusCode::kUnauthenticated};
inline constexpr HResult kTemplateDenied{
    0x80094012, "CERTSRV_E_TEMPLATE_DENIED",
    "The permissions on the certificate template do not allow the current user to enroll for "
    "this type of certificate.",
    absl::StatusCode::kPermissionDenied};
// Subject alternative names built from the directory ([[account]]).
inline constexpr HResult kSubjectUpnRequired{
    0x8009480d, "CERTSRV_E_SUBJECT_UPN_REQUIRED",
    "The UPN is unavailable and cannot be added to the Subject Alternate name.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kSubjectEmailRequired{
    0x80094812, "CERTSRV_E_SUBJECT_EMAIL_REQUIRED",
    "The email name is unavailable and cannot be added to the Subject or Subject Alternate name.",
    absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kAccessDenied{0x80070005, "E_ACCESSDENIED", "Access is denied.",
                                       absl::StatusCode::kPermissionDenied};
inline constexpr HResult kBadSignature{0x80090006, "NTE_BAD_SIGNATURE", "Invalid Signature.",
                                       absl::StatusCode::kInvalidArgument};
// Request integrity (a CMC or PKCS#10 refused by a check; RequestCheckError
// below maps pki's RequestCheck to these). From Windows' winerror.h: the
// codes CryptoAPI itself returns for the same failures.
inline constexpr HResult kBadHash{0x80090002, "NTE_BAD_HASH", "Bad Hash.",
                                  absl::StatusCode::kInvalidArgument};
inline constexpr HResult kHashValue{0x80091007, "CRYPT_E_HASH_VALUE",
                                    "The hash value is not correct.",
                                    absl::StatusCode::kInvalidArgument};
inline constexpr HResult kSignerNotFound{0x8009100e, "CRYPT_E_SIGNER_NOT_FOUND",
                                         "Cannot find the original signer.",
                                         absl::StatusCode::kInvalidArgument};
// One key, one owner: the request's public key is already certified (or
// held by a pending archival request) for another subject or principal,
// or the same principal sends the same archival request again.
inline constexpr HResult kKeyExists{0x80092005, "CRYPT_E_EXISTS",
                                    "The object or property already exists.",
                                    absl::StatusCode::kAlreadyExists};
inline constexpr HResult kAsn1BadTag{0x8009310b, "CRYPT_E_ASN1_BADTAG", "ASN1 bad tag value met.",
                                     absl::StatusCode::kInvalidArgument};
inline constexpr HResult kInvalidArg{0x80070057, "E_INVALIDARG", "The parameter is incorrect.",
                                     absl::StatusCode::kInvalidArgument};
// Recovery.
inline constexpr HResult kAmbiguousName{0x8002802c, "TYPE_E_AMBIGUOUSNAME", "Ambiguous name.",
                                        absl::StatusCode::kFailedPrecondition};
inline constexpr HResult kNotFound{0x80092004, "CRYPT_E_NOT_FOUND",
                                   "Cannot find object or property.", absl::StatusCode::kNotFound};
// Delegated signing.
inline constexpr HResult kBadKeyset{0x80090016, "NTE_BAD_KEYSET", "Keyset does not exist",
                                    absl::StatusCode::kNotFound};
// (an algorithm not allowed for the key: kBadAlgorithm, NTE_BAD_ALGID, above)
inline constexpr HResult kBadLen{0x80090004, "NTE_BAD_LEN", "Bad Length.",
                                 absl::StatusCode::kInvalidArgument};
// Key import (certutil -importKMS): the PFX password, as Windows answers it.
inline constexpr HResult kInvalidPassword{0x80070056, "ERROR_INVALID_PASSWORD",
                                          "The specified network password is not correct.",
                                          absl::StatusCode::kInvalidArgument};
}  // namespace hresult

// A request refused by an integrity check (pki::RequestCheck carried by the
// status from pki::ParsePkcs10 / pki::ParseCmcRequest): key-hash ->
// NTE_BAD_HASH, message-digest -> CRYPT_E_HASH_VALUE, signature ->
// NTE_BAD_SIGNATURE, signer -> CRYPT_E_SIGNER_NOT_FOUND, algorithm ->
// NTE_BAD_ALGID, structure -> CRYPT_E_ASN1_BADTAG; with the check's message.
absl::Status RequestCheckError(const absl::Status& parse_failure);

// "<hresult text> <detail>" with the HRESULT attached.
absl::Status Error(const HResult& hr, const std::string& detail = {});
// The HRESULT attached to a status, if any.
std::optional<uint32_t> HResultOf(const absl::Status& status);
const HResult* FindHResult(uint32_t code);
// "0x8009400b".
std::string HResultHex(uint32_t code);
// Candidates of an ambiguous search (0x8002802c), one line each, carried
// with the status to the client (ErrorDetail.candidates).
absl::Status WithCandidates(absl::Status status, const std::vector<std::string>& candidates);
std::vector<std::string> CandidatesOf(const absl::Status& status);

}  // namespace keywarden::service
