// Subject alternative names and the Windows extensions an issued
// certificate carries so that Windows and mail clients can use it:
//   subjectAltName         UPN (otherName 1.3.6.1.4.1.311.20.2.3, UTF8String),
//                          e-mail (rfc822Name), DNS (dNSName)
//   1.3.6.1.4.1.311.21.7   certificate template v2: { templateID OID,
//                          templateMajorVersion INTEGER, templateMinorVersion INTEGER }
//   1.3.6.1.4.1.311.20.2   certificate template v1 name (BMPString)
//   1.2.840.113549.1.9.15  S/MIME capabilities (copied from the request)
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

inline constexpr char kUpnOid[] = "1.3.6.1.4.1.311.20.2.3";
inline constexpr char kTemplateV2ExtensionOid[] = "1.3.6.1.4.1.311.21.7";
inline constexpr char kTemplateV1ExtensionOid[] = "1.3.6.1.4.1.311.20.2";
inline constexpr char kSmimeCapabilitiesOid[] = "1.2.840.113549.1.9.15";

struct AltNames {
  std::vector<std::string> upns;       // otherName 1.3.6.1.4.1.311.20.2.3 (UTF8String)
  std::vector<std::string> emails;     // rfc822Name
  std::vector<std::string> dns_names;  // dNSName
  // Every other name, described ("URI http://...", "directoryName CN=x",
  // "otherName 1.2.3.4", "IP address"): kept only to be named in refusals.
  std::vector<std::string> others;

  bool empty() const {
    return upns.empty() && emails.empty() && dns_names.empty() && others.empty();
  }
};

// The subjectAltName of a certificate; no extension gives empty names. An
// unreadable extension, or a UPN/e-mail/DNS name holding a NUL or control
// character (text a viewer would cut or show otherwise), is an error.
absl::StatusOr<AltNames> CertificateAltNames(X509* cert);
// The same from a certificate's DER.
absl::StatusOr<AltNames> CertificateAltNames(std::span<const uint8_t> certificate_der);
// The subjectAltName a PKCS#10 request asks for in its extensionRequest.
absl::StatusOr<AltNames> RequestAltNames(X509_REQ* request);

// The extnValue (DER GeneralNames) of a subjectAltName holding `names`
// (upns, emails, dns_names; `others` must be empty). INVALID_ARGUMENT for
// no names or a value that is not printable text.
absl::StatusOr<std::vector<uint8_t>> EncodeAltNames(const AltNames& names);

// The v2 template extension value: SEQUENCE { OID, major, minor }.
// Empty if `oid` is not a dotted OID.
std::vector<uint8_t> TemplateV2ExtensionValue(const std::string& oid, uint64_t major,
                                              uint64_t minor);
// The v1 template name extension value: BMPString of `name` (UTF-8 in).
// Empty if `name` is not valid UTF-8.
std::vector<uint8_t> TemplateV1ExtensionValue(std::string_view name);

// The extnValue of the request's extension `oid` from its extensionRequest,
// or nullopt when the request has none.
std::optional<std::vector<uint8_t>> RequestExtensionValue(X509_REQ* request, const char* oid);

// Appends a non-critical (unless `critical`) extension with a DER value.
bool AddRawExtension(X509* cert, const char* oid, std::span<const uint8_t> value,
                     bool critical = false);

}  // namespace keywarden::pki
