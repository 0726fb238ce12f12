// PKCS#12 (PFX) files for recovered keys (seed: "Command-Line Key
// Recovery": certutil -recoverkey writes one, -MergePFX merges several).
//
// Default protection: PBES2 / PBKDF2-HMAC-SHA256 / AES-256-CBC for keys and
// certificates, HMAC-SHA256 MAC. Legacy: pbeWithSHAAnd3-KeyTripleDES-CBC
// for both and a SHA-1 MAC, for importers older than PBES2 support
// (Windows before Server 2019/10 1709, old Java and macOS).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/secret.h"

namespace keywarden::pki {

enum class Pkcs12Protection { kAes256Pbkdf2, kLegacy3Des };

struct Pkcs12Entry {
  EVP_PKEY* key = nullptr;      // a software private key
  X509* certificate = nullptr;  // its certificate (must match the key)
  std::vector<X509*> chain;     // issuers to include (each certificate once per file)
  std::string friendly_name;    // optional
};

struct Pkcs12Options {
  Pkcs12Protection protection = Pkcs12Protection::kAes256Pbkdf2;
  int iterations = 0;  // 0: 10000 for AES-256/PBKDF2, 2048 for legacy
};

// A PFX holding every entry: each key in a PKCS#8 shrouded key bag and each
// certificate in an encrypted bag, keys and certificates linked by a
// localKeyID. A key that does not match its certificate is refused.
absl::StatusOr<std::vector<uint8_t>> BuildPkcs12(const std::vector<Pkcs12Entry>& entries,
                                                 const hsm::SecretString& password,
                                                 const Pkcs12Options& options = {});

struct Pkcs12KeyAndCertificate {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> certificate;  // null when the file has no certificate for the key
  std::string friendly_name;
};

struct Pkcs12Contents {
  std::vector<Pkcs12KeyAndCertificate> keys;
  std::vector<ossl::UniquePtr<X509>> other_certificates;  // chains and unpaired certificates
};

// Opens a PFX: the MAC must verify with `password` (a wrong password is
// PERMISSION_DENIED, a damaged file DATA_LOSS); every key is paired with
// the certificate whose public key it matches. Encrypted parts are
// decrypted in LegacyReadContext, so RC2-40/128 and 3DES files (the Windows
// XP/2003 and old OpenSSL export defaults) read as well as PBES2 ones; a
// cipher not even the legacy provider has is UNIMPLEMENTED ("unsupported
// algorithm"), never called a wrong password.
absl::StatusOr<Pkcs12Contents> ReadPkcs12(std::span<const uint8_t> der,
                                          const hsm::SecretString& password);

// The library context PFX files are read in: OpenSSL's default and legacy
// providers, loaded into a private OSSL_LIB_CTX (never the default context,
// and used for nothing else: no writing, no key generation). `load_error`
// (optional) receives why the legacy provider did not load, empty when it
// did; the result is null only when no context could be made at all.
OSSL_LIB_CTX* LegacyReadContext(std::string* load_error = nullptr);

}  // namespace keywarden::pki
