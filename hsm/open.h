// One call from a PKCS#11 URI (as operators write it in configuration) to a
// logged-in token.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "hsm/pin.h"
#include "hsm/token.h"
#include "hsm/uri.h"

namespace keywarden::hsm {

struct OpenOptions {
  // Module used when the URI has neither module-path nor module-name.
  std::string default_module;
  // PIN source; when unset, the URI's pin-source, then its pin-value, is
  // used, and with none of them the token is opened without logging in.
  std::optional<PinSource> pin;
  Token::Options token;
};

absl::StatusOr<std::shared_ptr<Token>> OpenToken(const Pkcs11Uri& uri, const OpenOptions& options);

}  // namespace keywarden::hsm
