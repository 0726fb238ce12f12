// RFC 7512 PKCS#11 URIs, parsed with p11-kit. A URI names a token (label,
// serial, manufacturer, model), optionally an object on it (object label,
// id, type), and optionally the module (module-name / module-path) and the
// PIN source (pin-source). A pin-value in a URI is accepted but never shown:
// Redacted() is what logs and error messages use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/pkcs11.h"
#include "hsm/secret.h"

namespace keywarden::hsm {

struct SlotToken;

class Pkcs11Uri {
 public:
  static absl::StatusOr<Pkcs11Uri> Parse(std::string_view uri);

  // Token selectors; empty means "any".
  const std::string& token_label() const { return token_label_; }
  const std::string& token_serial() const { return token_serial_; }
  const std::string& token_manufacturer() const { return token_manufacturer_; }
  const std::string& token_model() const { return token_model_; }

  // Object selectors.
  const std::string& object_label() const { return object_label_; }
  const std::vector<uint8_t>& object_id() const { return object_id_; }
  std::optional<CK_OBJECT_CLASS> object_class() const { return object_class_; }

  const std::string& module_name() const { return module_name_; }
  const std::string& module_path() const { return module_path_; }
  const std::string& pin_source() const { return pin_source_; }
  bool has_pin_value() const { return !pin_value_.empty(); }
  const SecretString& pin_value() const { return pin_value_; }

  bool MatchesToken(const SlotToken& token) const;
  bool has_token_selector() const {
    return !token_label_.empty() || !token_serial_.empty() || !token_manufacturer_.empty() ||
           !token_model_.empty();
  }
  bool has_object_selector() const { return !object_label_.empty() || !object_id_.empty(); }

  // The URI as given but with any pin-value replaced by "REDACTED".
  const std::string& Redacted() const { return redacted_; }

 private:
  std::string token_label_, token_serial_, token_manufacturer_, token_model_;
  std::string object_label_;
  std::vector<uint8_t> object_id_;
  std::optional<CK_OBJECT_CLASS> object_class_;
  std::string module_name_, module_path_, pin_source_;
  SecretString pin_value_;
  std::string redacted_;
};

}  // namespace keywarden::hsm
