// Where a token PIN comes from: a file, an environment variable, or an
// interactive prompt on the terminal. The PIN itself is never logged.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "hsm/secret.h"

namespace keywarden::hsm {

class PinSource {
 public:
  enum class Kind { kFile, kEnv, kPrompt, kValue };

  // "file:/path", "env:NAME", "prompt" (or "prompt:Text to show"); a bare
  // path (as in the RFC 7512 pin-source attribute, or "file:///path") is a file.
  static absl::StatusOr<PinSource> Parse(std::string_view spec);
  static PinSource File(std::string path) { return PinSource(Kind::kFile, std::move(path)); }
  static PinSource Env(std::string name) { return PinSource(Kind::kEnv, std::move(name)); }
  static PinSource Prompt(std::string text) { return PinSource(Kind::kPrompt, std::move(text)); }
  // For tests and for a pin-value taken from a URI.
  static PinSource Value(SecretString pin);

  // Reads the PIN. A file's trailing newline is dropped; an empty PIN is an error.
  absl::StatusOr<SecretString> Read() const;

  // "file /run/secrets/ca.pin", "environment variable CA_PIN", "prompt":
  // safe to print.
  std::string Describe() const;

 private:
  PinSource(Kind kind, std::string where) : kind_(kind), where_(std::move(where)) {}
  Kind kind_;
  std::string where_;
  SecretString value_;
};

}  // namespace keywarden::hsm
