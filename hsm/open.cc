#include "hsm/open.h"
#include "hsm/strings.h"

namespace keywarden::hsm {

absl::StatusOr<std::shared_ptr<Token>> OpenToken(const Pkcs11Uri& uri, const OpenOptions& options) {
  std::string spec = !uri.module_path().empty()   ? uri.module_path()
                     : !uri.module_name().empty() ? uri.module_name()
                                                  : options.default_module;
  if (spec.empty()) {
    return absl::InvalidArgumentError(StrCat("PKCS#11 URI \"", uri.Redacted(),
                                             "\" names no module and no default module is set"));
  }
  auto module = Module::Load(spec);
  if (!module.ok()) return module.status();
  auto token = Token::Open(*module, uri, options.token);
  if (!token.ok()) return token.status();

  std::optional<PinSource> source = options.pin;
  if (!source && !uri.pin_source().empty()) {
    auto parsed = PinSource::Parse(uri.pin_source());
    if (!parsed.ok()) return parsed.status();
    source = *parsed;
  }
  if (!source && uri.has_pin_value()) source = PinSource::Value(uri.pin_value());
  if (!source) return token;

  // Kept to log in again after a token fault and for context-specific
  // logins; the PIN is read from it each time and never kept.
  (*token)->SetPinSource(*source);
  auto pin = source->Read();
  if (!pin.ok()) return pin.status();
  absl::Status st = (*token)->Login(*pin);
  pin->Clear();
  if (!st.ok()) return st;
  return token;
}

}  // namespace keywarden::hsm
