// Helpers shared by tests: running independent command-line tools (openssl,
// pkcs11-tool), temporary files, and PEM/DER I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "hsm/ossl.h"

namespace keywarden::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` with /bin/sh; never throws.
CommandResult RunCommand(const std::string& command);

// A directory removed at destruction (kept when KEYWARDEN_KEEP_FIXTURES is set).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::vector<uint8_t>& data);
void WriteFile(const std::string& path, const std::string& data);
std::vector<uint8_t> ReadFile(const std::string& path);
inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}
bool FileExists(const std::string& path);
// A file that must exist and be non-empty (test vectors): throws with its
// path otherwise, which gtest reports as a failure of the test.
std::vector<uint8_t> ReadRequiredFile(const std::string& path);

std::string ToPem(X509* cert);
std::string PublicKeyPem(EVP_PKEY* key);
std::string PrivateKeyPem(EVP_PKEY* key);  // software keys only

// A fresh software RSA key (default library context).
ossl::UniquePtr<EVP_PKEY> SoftwareRsaKey(int bits = 2048);

// Self-signed CA certificate for `key`, signed in `libctx` (the token key's
// context) with `md`; basicConstraints CA:TRUE, keyCertSign|cRLSign, SKI.
ossl::UniquePtr<X509> SelfSignedCa(OSSL_LIB_CTX* libctx, EVP_PKEY* key, const std::string& cn,
                                   const char* md = "SHA256", bool pss = false);

}  // namespace keywarden::testing
