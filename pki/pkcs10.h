// PKCS#10 certification requests as Windows and OpenSSL send them, with the
// Windows certificate-template hints they may carry:
//   extension 1.3.6.1.4.1.311.21.7  v2 template: OID, major, minor version
//   extension 1.3.6.1.4.1.311.20.2  v1 template name (BMPString)
//   attribute 1.3.6.1.4.1.311.13.2.1 name/value pair "CertificateTemplate=..."
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

struct Pkcs10Request {
  ossl::UniquePtr<X509_REQ> req;
  std::vector<uint8_t> der;
  std::string template_name;  // v1 extension or name/value attribute
  std::string template_oid;   // v2 extension
  int64_t template_major = -1;
  int64_t template_minor = -1;
  bool empty_subject = false;

  // The request's key, read by ReadPublicKey (pki/spki.h). `req` holds the
  // key's algorithm and bits as sent but no decoded key:
  // X509_REQ_get0_pubkey(req) is null.
  EVP_PKEY* public_key() const { return key_.get(); }
  // SHA-256 of the request's SubjectPublicKeyInfo, which ParsePkcs10 has
  // checked is the one encoding of public_key() and SpkiSha256's DER of it:
  // set once by ParsePkcs10 (a submission needs it three times, and OpenSSL
  // 3.0 encodes a key slowly).
  const std::string& spki_sha256() const { return spki_sha256_; }

 private:
  friend absl::StatusOr<Pkcs10Request> ParsePkcs10(std::span<const uint8_t> data);
  ossl::UniquePtr<EVP_PKEY> key_;
  std::string spki_sha256_;
};

// Which check a refused request failed, carried as a payload on the status
// (the service maps each to its HRESULT in service/errors.h):
//   kStructure      not well-formed (DER, layout, missing parts)
//   kKeyHash        the encrypted-key hash (1.3.6.1.4.1.311.21.21) does not
//                   match the encrypted private key
//   kMessageDigest  the CMS messageDigest does not match the PKIData
//   kSignature      a signature (CMS or the PKCS#10's own) does not verify
//   kSigner         the CMS signer is not the PKCS#10's key
//   kAlgorithm      an algorithm or key type keywarden does not accept
enum class RequestCheck { kStructure, kKeyHash, kMessageDigest, kSignature, kSigner, kAlgorithm };
inline constexpr char kRequestCheckPayload[] = "type.keywarden/request-check";
// INVALID_ARGUMENT `message` marked with `check`.
absl::Status RequestCheckError(RequestCheck check, const std::string& message);
// The check a status from ParsePkcs10 / ParseCmcRequest failed
// (kStructure when it carries none).
RequestCheck RequestCheckOf(const absl::Status& status);
const char* RequestCheckName(RequestCheck check);  // "structure", "key-hash", ...

// SHA-256 (lower-case hex) of a key's DER SubjectPublicKeyInfo; empty when
// it does not encode.
std::string SpkiSha256(EVP_PKEY* key);
// SHA-256 (lower-case hex) of `data`.
std::string Sha256Hex(std::span<const uint8_t> data);

// Accepts DER or PEM ("CERTIFICATE REQUEST" / "NEW CERTIFICATE REQUEST").
// The request's self-signature must verify, and its SubjectPublicKeyInfo
// must be the one encoding of its key (ReadPublicKey): the certificate
// carries the request's key bits as they are, and a key is looked up by the
// hash of that encoding, so a second encoding of the same key (BER, a
// compressed EC point) would be a second key to every check.
absl::StatusOr<Pkcs10Request> ParsePkcs10(std::span<const uint8_t> data);

// PEM to DER when `data` is PEM (any label), else `data` unchanged.
std::vector<uint8_t> PemToDer(std::span<const uint8_t> data);

// "pkcs10" or "cmc" (a CMS ContentInfo), by the first elements' structure;
// empty when it is neither.
std::string SniffRequestFormat(std::span<const uint8_t> der);

}  // namespace keywarden::pki
