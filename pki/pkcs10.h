// PKCS#10 certification requests as Windows and OpenSSL send them, with the
// Windows certificate-template hints they may carry:
//   extension 1.3.6.1.4.1.311.21.7  v2 template: OID, major, minor version
//   extension 1.3.6.1.4.1.311.20.2  v1 template name (BMPString)
//   attribute 1.3.6.1.4.1.311.13.2.1 name/value pair "CertificateTemplate=..."
#pragma once

#include <cstdint>
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

  EVP_PKEY* public_key() const { return X509_REQ_get0_pubkey(req.get()); }
};

// Accepts DER or PEM ("CERTIFICATE REQUEST" / "NEW CERTIFICATE REQUEST").
// The request's self-signature must verify.
absl::StatusOr<Pkcs10Request> ParsePkcs10(std::span<const uint8_t> data);

// PEM to DER when `data` is PEM (any label), else `data` unchanged.
std::vector<uint8_t> PemToDer(std::span<const uint8_t> data);

// "pkcs10" or "cmc" (a CMS ContentInfo), by the first elements' structure;
// empty when it is neither.
std::string SniffRequestFormat(std::span<const uint8_t> der);

}  // namespace keywarden::pki
