// The signature algorithms delegated signing offers, by the names operators
// write in [[signing.keys]] algorithms and the proto's SignatureAlgorithm
// values. Header-only: the configuration parser and the signing service
// share one table, so a name cannot be accepted by one and unknown to the
// other.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace keywarden::service::signing {

enum class Scheme { kRsaPkcs1, kRsaPss, kEcdsa };

// Indices into kAlgorithms (and the per-algorithm usage counters).
enum class Algorithm : unsigned char {
  kRsaPkcs1Sha256,
  kRsaPkcs1Sha384,
  kRsaPkcs1Sha512,
  kRsaPssSha256,
  kRsaPssSha384,
  kRsaPssSha512,
  kEcdsaSha256,
  kEcdsaSha384,
  kEcdsaSha512,
};

struct AlgorithmInfo {
  Algorithm id;
  const char* name;    // as in the configuration: "rsa-pkcs1-sha256"
  const char* digest;  // OpenSSL digest name: "SHA256"
  size_t digest_size;  // bytes
  Scheme scheme;
};

inline constexpr AlgorithmInfo kAlgorithms[] = {
    {Algorithm::kRsaPkcs1Sha256, "rsa-pkcs1-sha256", "SHA256", 32, Scheme::kRsaPkcs1},
    {Algorithm::kRsaPkcs1Sha384, "rsa-pkcs1-sha384", "SHA384", 48, Scheme::kRsaPkcs1},
    {Algorithm::kRsaPkcs1Sha512, "rsa-pkcs1-sha512", "SHA512", 64, Scheme::kRsaPkcs1},
    {Algorithm::kRsaPssSha256, "rsa-pss-sha256", "SHA256", 32, Scheme::kRsaPss},
    {Algorithm::kRsaPssSha384, "rsa-pss-sha384", "SHA384", 48, Scheme::kRsaPss},
    {Algorithm::kRsaPssSha512, "rsa-pss-sha512", "SHA512", 64, Scheme::kRsaPss},
    {Algorithm::kEcdsaSha256, "ecdsa-sha256", "SHA256", 32, Scheme::kEcdsa},
    {Algorithm::kEcdsaSha384, "ecdsa-sha384", "SHA384", 48, Scheme::kEcdsa},
    {Algorithm::kEcdsaSha512, "ecdsa-sha512", "SHA512", 64, Scheme::kEcdsa},
};
inline constexpr size_t kAlgorithmCount = sizeof(kAlgorithms) / sizeof(kAlgorithms[0]);
static_assert(
    [] {
      for (size_t i = 0; i < kAlgorithmCount; ++i) {
        if (static_cast<size_t>(kAlgorithms[i].id) != i) return false;
      }
      return true;
    }(),
    "kAlgorithms must be in Algorithm order");

inline constexpr const AlgorithmInfo& Info(Algorithm a) {
  return kAlgorithms[static_cast<size_t>(a)];
}

inline std::optional<Algorithm> ParseAlgorithm(std::string_view name) {
  for (const AlgorithmInfo& a : kAlgorithms) {
    if (name == a.name) return a.id;
  }
  return std::nullopt;
}

// "rsa-pkcs1-sha256, rsa-pkcs1-sha384, ..." for messages.
inline const char* AlgorithmNames() {
  return "rsa-pkcs1-sha256, rsa-pkcs1-sha384, rsa-pkcs1-sha512, rsa-pss-sha256, "
         "rsa-pss-sha384, rsa-pss-sha512, ecdsa-sha256, ecdsa-sha384, ecdsa-sha512";
}

}  // namespace keywarden::service::signing
