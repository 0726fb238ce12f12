// The archival step itself (ARCHITECTURE.md §4 step 4; seed: "Key
// Encryption"), shared by the daemon's KeyArchiver and the ceremony's
// round-trip proof so that the proof exercises exactly what the CA does:
// a fresh content-encryption key made on the CA token (3DES or AES-256)
// encrypts the PKCS#8 on the token and is wrapped on the token to each KRA
// certificate's RSA key (PKCS#1 v1.5 or OAEP-SHA1); the result is a CMS
// EnvelopedData ContentInfo only the KRAs can open.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"
#include "hsm/token.h"

namespace keywarden::pki {

enum class ArchivalScheme {
  kDes3RsaPkcs1,   // "des3-rsa-pkcs1": what Windows clients and CAs use
  kAes256RsaOaep,  // "aes256-rsa-oaep"
};
// "des3-rsa-pkcs1" or "aes256-rsa-oaep"; anything else is INVALID_ARGUMENT.
absl::StatusOr<ArchivalScheme> ParseArchivalScheme(std::string_view name);
std::string ArchivalSchemeName(ArchivalScheme scheme);

// Encrypts `pkcs8` (wiped before returning, on success and on error) to
// every certificate of `kras` (RSA keys) with a content key made on
// `token`. Errors name the KRA (SHA-1 thumbprint) a wrap failed for.
absl::StatusOr<std::vector<uint8_t>> EnvelopeToKras(const std::shared_ptr<hsm::Token>& token,
                                                    hsm::SecretBytes& pkcs8,
                                                    const std::vector<X509*>& kras,
                                                    ArchivalScheme scheme);

}  // namespace keywarden::pki
