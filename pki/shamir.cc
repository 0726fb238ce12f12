#include "pki/shamir.h"

#include <openssl/crypto.h>

#include <set>
#include <string>

#include "absl/strings/str_cat.h"

namespace keywarden::pki::shamir {

uint8_t Multiply(uint8_t a, uint8_t b) {
  // Russian-peasant multiplication, reduced by 0x11b; every step runs for
  // all eight bits and masks instead of branching.
  unsigned product = 0;
  unsigned x = a;
  unsigned y = b;
  for (int bit = 0; bit < 8; ++bit) {
    product ^= x & (0u - (y & 1u));
    y >>= 1;
    const unsigned carry = 0u - ((x >> 7) & 1u);
    x = ((x << 1) ^ (0x1bu & carry)) & 0xffu;
  }
  return static_cast<uint8_t>(product);
}

uint8_t Inverse(uint8_t a) {
  // a^254 = a^-1 in GF(2^8) (and 0 for 0), by a fixed addition chain.
  uint8_t result = 1;
  uint8_t power = a;                   // a^(2^i)
  for (int bit = 1; bit < 8; ++bit) {  // 254 = 0b11111110
    power = Multiply(power, power);
    result = Multiply(result, power);
  }
  return result;
}

absl::StatusOr<std::vector<Share>> Split(std::span<const uint8_t> secret, int k, int n,
                                         const RandomSource& random) {
  if (secret.empty()) return absl::InvalidArgumentError("shamir: the secret is empty");
  if (k < 2 || n < k || n > kMaxShares) {
    return absl::InvalidArgumentError(absl::StrCat("shamir: threshold ", k, " of ", n,
                                                   " shares is not 2 <= k <= n <= ", kMaxShares));
  }
  if (!random) return absl::InvalidArgumentError("shamir: no random source");
  // coefficients[j * L + b]: coefficient of x^(j+1) for byte b.
  hsm::SecretBytes coefficients(static_cast<size_t>(k - 1) * secret.size());
  if (absl::Status s = random(std::span<uint8_t>(coefficients.data(), coefficients.size()));
      !s.ok()) {
    return s;
  }
  std::vector<Share> shares;
  shares.reserve(static_cast<size_t>(n));
  for (int i = 1; i <= n; ++i) {
    Share share;
    share.index = static_cast<uint8_t>(i);
    share.value = hsm::SecretBytes(secret.size());
    const uint8_t x = share.index;
    for (size_t b = 0; b < secret.size(); ++b) {
      // Horner: ((c_{k-1} x + c_{k-2}) x + ... + c_1) x + secret.
      uint8_t y = 0;
      for (int j = k - 2; j >= 0; --j) {
        y = Multiply(y, x) ^ coefficients.data()[static_cast<size_t>(j) * secret.size() + b];
      }
      share.value.data()[b] = static_cast<uint8_t>(Multiply(y, x) ^ secret[b]);
    }
    shares.push_back(std::move(share));
  }
  return shares;
}

absl::StatusOr<hsm::SecretBytes> Combine(std::span<const Share> shares) {
  if (shares.empty()) return absl::InvalidArgumentError("shamir: no share");
  const size_t length = shares.front().value.size();
  std::set<int> seen;
  for (const Share& s : shares) {
    if (s.index == 0) return absl::InvalidArgumentError("shamir: a share has index 0");
    if (!seen.insert(s.index).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("shamir: share ", static_cast<int>(s.index), " is given twice"));
    }
    if (s.value.size() != length || length == 0) {
      return absl::InvalidArgumentError(absl::StrCat("shamir: share ", static_cast<int>(s.index),
                                                     " has ", s.value.size(), " bytes, the others ",
                                                     length));
    }
  }
  // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); in GF(2^8)
  // subtraction is XOR. The indexes are public.
  hsm::SecretBytes secret(length);
  for (const Share& si : shares) {
    uint8_t numerator = 1;
    uint8_t denominator = 1;
    for (const Share& sj : shares) {
      if (sj.index == si.index) continue;
      numerator = Multiply(numerator, sj.index);
      denominator = Multiply(denominator, static_cast<uint8_t>(sj.index ^ si.index));
    }
    const uint8_t basis = Multiply(numerator, Inverse(denominator));
    for (size_t b = 0; b < length; ++b) {
      secret.data()[b] ^= Multiply(basis, si.value.data()[b]);
    }
  }
  return secret;
}

}  // namespace keywarden::pki::shamir
