// Key files an operator hands the CLI (verifykeys): a private key as PEM
// (PKCS#8, encrypted PKCS#8 or traditional), DER (PKCS#8 or PKCS#1), a CAPI
// PRIVATEKEYBLOB or a PFX (every key of it, each paired with its
// certificate); and a certificate or public key, PEM or DER. The bytes are
// untrusted: they are parsed here, where the key_file fuzzer reaches them.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"

namespace keywarden::pki {

struct KeyFileKey {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> certificate;  // PFX only; null when the file has none for it
  std::string label;                  // PFX only: "key 2 of 3 (\"friendly name\")"
};

// Called at most once, and only when the file is protected (an encrypted
// PEM key or a PFX).
using PasswordSource = std::function<absl::StatusOr<hsm::SecretString>()>;

// `name` (the file's path) prefixes every error.
absl::StatusOr<std::vector<KeyFileKey>> ParsePrivateKeyFile(std::span<const uint8_t> bytes,
                                                            std::string_view name,
                                                            const PasswordSource& password);

struct PublicKeyFile {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> certificate;  // when the file is a certificate
};
absl::StatusOr<PublicKeyFile> ParsePublicKeyFile(std::span<const uint8_t> bytes,
                                                 std::string_view name);

}  // namespace keywarden::pki
