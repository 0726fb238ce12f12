#include <openssl/crypto.h>

#include "hsm/strings.h"
#include "hsm/uri.h"

#include <cstring>
#include <regex>

#include <p11-kit/uri.h>

#include "hsm/module.h"

namespace keywarden::hsm {

namespace {

struct UriDeleter {
  void operator()(P11KitUri* u) const { p11_kit_uri_free(u); }
};

std::string RedactPinValue(std::string_view uri) {
  static const std::regex kPin("(pin-value=)[^;?&]*");
  return std::regex_replace(std::string(uri), kPin, "$1REDACTED");
}

}  // namespace

absl::StatusOr<Pkcs11Uri> Pkcs11Uri::Parse(std::string_view text) {
  Pkcs11Uri out;
  out.redacted_ = RedactPinValue(text);
  if (text.substr(0, 7) != "pkcs11:") {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", out.redacted_, "\": must start with \"pkcs11:\""));
  }
  // p11-kit ignores a type it does not know; a typo there would silently
  // widen the search, so check it here.
  std::string_view path = text.substr(
      7, text.find('?') == std::string_view::npos ? std::string_view::npos : text.find('?') - 7);
  for (size_t pos = 0; pos <= path.size();) {
    size_t end = path.find(';', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view attr = path.substr(pos, end - pos);
    if (attr.starts_with("type=")) {
      std::string_view v = attr.substr(5);
      if (v != "public" && v != "private" && v != "cert" && v != "secret-key" && v != "data") {
        return absl::InvalidArgumentError(
            StrCat("PKCS#11 URI \"", out.redacted_, "\": unknown object type \"", v,
                   "\" (expected public, private, cert, secret-key or data)"));
      }
    }
    pos = end + 1;
  }
  std::unique_ptr<P11KitUri, UriDeleter> uri(p11_kit_uri_new());
  std::string s(text);
  int rc = p11_kit_uri_parse(s.c_str(), P11_KIT_URI_FOR_ANY, uri.get());
  OPENSSL_cleanse(s.data(), s.size());
  if (rc != P11_KIT_URI_OK) {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", out.redacted_, "\": ", p11_kit_uri_message(rc)));
  }
  if (CK_TOKEN_INFO* t = p11_kit_uri_get_token_info(uri.get())) {
    out.token_label_ = TrimPadded(t->label, sizeof t->label);
    out.token_serial_ = TrimPadded(t->serialNumber, sizeof t->serialNumber);
    out.token_manufacturer_ = TrimPadded(t->manufacturerID, sizeof t->manufacturerID);
    out.token_model_ = TrimPadded(t->model, sizeof t->model);
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_LABEL)) {
    out.object_label_.assign(static_cast<const char*>(a->pValue), a->ulValueLen);
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_ID)) {
    auto* p = static_cast<const uint8_t*>(a->pValue);
    out.object_id_.assign(p, p + a->ulValueLen);
  }
  if (CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri.get(), CKA_CLASS)) {
    if (a->ulValueLen == sizeof(CK_OBJECT_CLASS)) {
      CK_OBJECT_CLASS c;
      std::memcpy(&c, a->pValue, sizeof c);
      out.object_class_ = c;
    }
  }
  if (const char* v = p11_kit_uri_get_module_name(uri.get())) out.module_name_ = v;
  if (const char* v = p11_kit_uri_get_module_path(uri.get())) out.module_path_ = v;
  if (const char* v = p11_kit_uri_get_pin_source(uri.get())) out.pin_source_ = v;
  if (const char* v = p11_kit_uri_get_pin_value(uri.get())) {
    out.pin_value_ = SecretString(v);
    // p11-kit keeps its own copy; wipe it before the URI object is freed.
    p11_kit_uri_set_pin_value(uri.get(), nullptr);
  }
  return out;
}

bool Pkcs11Uri::MatchesToken(const SlotToken& token) const {
  if (!token_label_.empty() && token_label_ != token.label) return false;
  if (!token_serial_.empty() && token_serial_ != token.serial) return false;
  if (!token_manufacturer_.empty() && token_manufacturer_ != token.manufacturer) return false;
  if (!token_model_.empty() && token_model_ != token.model) return false;
  return true;
}

}  // namespace keywarden::hsm
