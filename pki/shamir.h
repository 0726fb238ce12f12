// Shamir secret sharing over GF(2^8) (issue 17; docs/THRESHOLD.md).
//
// A secret of L bytes is split byte by byte: for every byte position a
// polynomial of degree k - 1 over GF(2^8) (the AES field, x^8 + x^4 + x^3 +
// x + 1) whose constant term is the secret byte and whose other k - 1
// coefficients are random. Share i (x = 1..n) holds the L values of the
// polynomials at x = i. Any k shares give the secret by Lagrange
// interpolation at x = 0; k - 1 shares are consistent with every secret,
// so they say nothing about it.
//
// The field arithmetic has no table lookups and no branches on secret data.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/secret.h"

namespace keywarden::pki::shamir {

inline constexpr int kMaxShares = 255;

// Fills the buffer with random bytes (the daemon passes the token's RNG).
using RandomSource = std::function<absl::Status(std::span<uint8_t>)>;

struct Share {
  uint8_t index = 0;       // x, 1..255
  hsm::SecretBytes value;  // the polynomials at x, as long as the secret
};

// Field operations, exposed for tests.
uint8_t Multiply(uint8_t a, uint8_t b);
uint8_t Inverse(uint8_t a);  // Inverse(0) == 0

// n shares (x = 1..n) of `secret`; 2 <= k <= n <= 255, secret not empty.
absl::StatusOr<std::vector<Share>> Split(std::span<const uint8_t> secret, int k, int n,
                                         const RandomSource& random);

// The secret from `shares` (at least the threshold, all of one length,
// distinct non-zero indexes). With fewer than k shares the result is a
// value unrelated to the secret: the caller must know k and check the
// result (THRESHOLD.md: commitments and the key's certificate).
absl::StatusOr<hsm::SecretBytes> Combine(std::span<const Share> shares);

}  // namespace keywarden::pki::shamir
