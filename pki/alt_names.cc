#include "pki/alt_names.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

std::string ObjText(const ASN1_OBJECT* obj) {
  char buf[128];
  const int n = OBJ_obj2txt(buf, sizeof buf, obj, 1);
  return n > 0 && n < static_cast<int>(sizeof buf) ? std::string(buf) : std::string();
}

// Text of a string value; false when it holds a NUL or a control character.
bool PlainText(const ASN1_STRING* s, std::string* out) {
  if (s == nullptr) return false;
  const auto* data = ASN1_STRING_get0_data(s);
  const int length = ASN1_STRING_length(s);
  if (length <= 0) return false;
  out->assign(reinterpret_cast<const char*>(data), static_cast<size_t>(length));
  for (unsigned char c : *out) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool PlainText(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

absl::StatusOr<AltNames> FromGeneralNames(const GENERAL_NAMES* names, std::string_view where) {
  AltNames out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    std::string text;
    switch (g->type) {
      case GEN_OTHERNAME: {
        const std::string oid = ObjText(g->d.otherName->type_id);
        if (oid != kUpnOid) {
          out.others.push_back(StrCat("otherName ", oid.empty() ? "(unreadable OID)" : oid));
          break;
        }
        const ASN1_TYPE* v = g->d.otherName->value;
        if (v == nullptr || v->type != V_ASN1_UTF8STRING) {
          return absl::InvalidArgumentError(
              StrCat(where, ": the UPN (otherName ", kUpnOid, ") is not a UTF8String"));
        }
        if (!PlainText(v->value.utf8string, &text)) {
          return absl::InvalidArgumentError(
              StrCat(where, ": a UPN is empty or holds a NUL or control character"));
        }
        out.upns.push_back(text);
        break;
      }
      case GEN_EMAIL:
        if (!PlainText(g->d.rfc822Name, &text)) {
          return absl::InvalidArgumentError(
              StrCat(where, ": an e-mail name is empty or holds a NUL or control character"));
        }
        out.emails.push_back(text);
        break;
      case GEN_DNS:
        if (!PlainText(g->d.dNSName, &text)) {
          return absl::InvalidArgumentError(
              StrCat(where, ": a DNS name is empty or holds a NUL or control character"));
        }
        out.dns_names.push_back(text);
        break;
      case GEN_URI:
        out.others.push_back(PlainText(g->d.uniformResourceIdentifier, &text) ? StrCat("URI ", text)
                                                                              : std::string("URI"));
        break;
      case GEN_DIRNAME:
        out.others.push_back(StrCat("directoryName ", FormatName(g->d.directoryName)));
        break;
      case GEN_IPADD:
        out.others.push_back("IP address");
        break;
      case GEN_RID:
        out.others.push_back(StrCat("registeredID ", ObjText(g->d.registeredID)));
        break;
      default:
        out.others.push_back("x400Address or ediPartyName");
        break;
    }
  }
  return out;
}

// UTF-8 to UTF-16BE; false on malformed UTF-8.
bool Utf8ToBmp(std::string_view in, std::vector<uint8_t>* out) {
  for (size_t i = 0; i < in.size();) {
    const auto c = static_cast<unsigned char>(in[i]);
    uint32_t cp = 0;
    size_t n = 0;
    if (c < 0x80) {
      cp = c;
      n = 1;
    } else if ((c & 0xe0) == 0xc0) {
      cp = c & 0x1f;
      n = 2;
    } else if ((c & 0xf0) == 0xe0) {
      cp = c & 0x0f;
      n = 3;
    } else if ((c & 0xf8) == 0xf0) {
      cp = c & 0x07;
      n = 4;
    } else {
      return false;
    }
    if (i + n > in.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(in[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    auto put = [out](uint32_t unit) {
      out->push_back(static_cast<uint8_t>(unit >> 8));
      out->push_back(static_cast<uint8_t>(unit & 0xff));
    };
    if (cp >= 0x10000) {
      cp -= 0x10000;
      put(0xd800 | (cp >> 10));
      put(0xdc00 | (cp & 0x3ff));
    } else {
      put(cp);
    }
    i += n;
  }
  return true;
}

der::Bytes Text(std::string_view s) {
  return der::Bytes(s.begin(), s.end());
}

}  // namespace

absl::StatusOr<AltNames> CertificateAltNames(X509* cert) {
  int critical = -1;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, &critical, nullptr));
  if (names == nullptr) {
    ERR_clear_error();
    if (critical == -1) return AltNames{};
    return absl::InvalidArgumentError(critical == -2
                                          ? "the certificate has more than one subjectAltName"
                                          : "the certificate's subjectAltName does not decode");
  }
  auto out = FromGeneralNames(names, "the certificate's subjectAltName");
  GENERAL_NAMES_free(names);
  return out;
}

absl::StatusOr<AltNames> CertificateAltNames(std::span<const uint8_t> certificate_der) {
  const unsigned char* p = certificate_der.data();
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(certificate_der.size())));
  if (!cert) {
    ERR_clear_error();
    return absl::InvalidArgumentError("the certificate does not decode");
  }
  return CertificateAltNames(cert.get());
}

absl::StatusOr<AltNames> RequestAltNames(X509_REQ* request) {
  STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(request);
  if (exts == nullptr) {
    ERR_clear_error();
    return AltNames{};
  }
  int critical = -1;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509V3_get_d2i(exts, NID_subject_alt_name, &critical, nullptr));
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  if (names == nullptr) {
    ERR_clear_error();
    if (critical == -1) return AltNames{};
    return absl::InvalidArgumentError(critical == -2
                                          ? "the request asks for more than one subjectAltName"
                                          : "the request's subjectAltName does not decode");
  }
  auto out = FromGeneralNames(names, "the request's subjectAltName");
  GENERAL_NAMES_free(names);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncodeAltNames(const AltNames& names) {
  if (!names.others.empty()) {
    return absl::InvalidArgumentError(
        StrCat("subjectAltName: cannot encode ", names.others.front()));
  }
  der::Bytes all;
  auto append = [&all](const der::Bytes& b) { all.insert(all.end(), b.begin(), b.end()); };
  for (const std::string& upn : names.upns) {
    if (!PlainText(upn)) return absl::InvalidArgumentError("subjectAltName: a UPN is not text");
    // otherName ::= [0] { type-id OID, [0] EXPLICIT UTF8String }
    append(der::Tlv(
        der::ContextConstructed(0),
        der::Concat({der::Oid(kUpnOid), der::Tlv(der::ContextConstructed(0),
                                                 der::Tlv(der::kUtf8String, Text(upn)))})));
  }
  for (const std::string& email : names.emails) {
    if (!PlainText(email)) {
      return absl::InvalidArgumentError("subjectAltName: an e-mail name is not text");
    }
    append(der::Tlv(der::ContextPrimitive(1), Text(email)));  // rfc822Name IA5String
  }
  for (const std::string& dns : names.dns_names) {
    if (!PlainText(dns))
      return absl::InvalidArgumentError("subjectAltName: a DNS name is not text");
    append(der::Tlv(der::ContextPrimitive(2), Text(dns)));  // dNSName IA5String
  }
  if (all.empty()) return absl::InvalidArgumentError("subjectAltName: no names");
  return der::Tlv(der::kSequence, all);
}

std::vector<uint8_t> TemplateV2ExtensionValue(const std::string& oid, uint64_t major,
                                              uint64_t minor) {
  der::Bytes id = der::Oid(oid.c_str());
  if (id.empty()) return {};
  return der::Tlv(der::kSequence,
                  der::Concat({id, der::SmallInteger(major), der::SmallInteger(minor)}));
}

std::vector<uint8_t> TemplateV1ExtensionValue(std::string_view name) {
  std::vector<uint8_t> bmp;
  if (name.empty() || !Utf8ToBmp(name, &bmp)) return {};
  return der::Tlv(der::kBmpString, bmp);
}

std::optional<std::vector<uint8_t>> RequestExtensionValue(X509_REQ* request, const char* oid) {
  STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(request);
  if (exts == nullptr) {
    ERR_clear_error();
    return std::nullopt;
  }
  std::optional<std::vector<uint8_t>> out;
  for (int i = 0; i < sk_X509_EXTENSION_num(exts); ++i) {
    X509_EXTENSION* ext = sk_X509_EXTENSION_value(exts, i);
    if (ObjText(X509_EXTENSION_get_object(ext)) != oid) continue;
    const ASN1_OCTET_STRING* v = X509_EXTENSION_get_data(ext);
    out.emplace(v->data, v->data + v->length);
    break;
  }
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  return out;
}

bool AddRawExtension(X509* cert, const char* oid, std::span<const uint8_t> value, bool critical) {
  ossl::UniquePtr<ASN1_OBJECT> obj(OBJ_txt2obj(oid, 1));
  ossl::UniquePtr<ASN1_OCTET_STRING> data(ASN1_OCTET_STRING_new());
  if (!obj || !data ||
      ASN1_OCTET_STRING_set(data.get(), value.data(), static_cast<int>(value.size())) != 1) {
    return false;
  }
  X509_EXTENSION* ext =
      X509_EXTENSION_create_by_OBJ(nullptr, obj.get(), critical ? 1 : 0, data.get());
  if (ext == nullptr) return false;
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok == 1;
}

}  // namespace keywarden::pki
