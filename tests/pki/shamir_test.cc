// Shamir sharing over GF(2^8). Expected values come from an independent
// implementation (exp/log tables with generator 3, computed in Python) and
// from FIPS-197, never from the code under test.
#include "pki/shamir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace keywarden::pki::shamir {
namespace {

std::string Hex(std::span<const uint8_t> b) {
  static constexpr char d[] = "0123456789abcdef";
  std::string s;
  for (uint8_t x : b) {
    s.push_back(d[x >> 4]);
    s.push_back(d[x & 15]);
  }
  return s;
}

// Coefficient byte i is (7 i + 3) mod 256, as in the Python reference.
RandomSource Counting() {
  return [](std::span<uint8_t> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>((i * 7 + 3) % 256);
    return absl::OkStatus();
  };
}

std::vector<uint8_t> Secret16() {
  std::vector<uint8_t> s(16);
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint8_t>(0x10 + i);
  return s;
}

TEST(ShamirTest, FieldMatchesFips197) {
  EXPECT_EQ(Multiply(0x57, 0x83), 0xc1);  // FIPS-197 §4.2
  EXPECT_EQ(Multiply(0x57, 0x13), 0xfe);  // FIPS-197 §4.2.1
  EXPECT_EQ(Inverse(0x53), 0xca);         // FIPS-197 §5.1.1 example
  EXPECT_EQ(Inverse(0), 0);
  for (int a = 1; a < 256; ++a) {
    EXPECT_EQ(Multiply(static_cast<uint8_t>(a), Inverse(static_cast<uint8_t>(a))), 1) << a;
  }
}

TEST(ShamirTest, SharesMatchAnIndependentImplementation) {
  const std::vector<uint8_t> secret = Secret16();
  auto shares = Split(secret, 3, 5, Counting());
  ASSERT_TRUE(shares.ok()) << shares.status();
  ASSERT_EQ(shares->size(), 5u);
  const char* expected[] = {"6061828384a5a68788e9ea8b8c8daeaf", "c1f6023520370ed9f4635a9683b4ad9a",
                            "b18692a5b087be496493aa0613241d2a", "6dd89e2b402eb169aadf40f49f2a6edb",
                            "1da80ebbd09e01f93a2fb0640fbade6b"};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*shares)[i].index, i + 1);
    EXPECT_EQ(Hex((*shares)[i].value.span()), expected[i]) << "share " << i + 1;
  }
}

// Every k-subset of n shares gives the secret; every (k-1)-subset does not.
void CheckSubsets(int k, int n) {
  std::vector<uint8_t> secret(32);
  for (size_t i = 0; i < secret.size(); ++i) secret[i] = static_cast<uint8_t>(0xa5 ^ (i * 29));
  uint8_t counter = 1;
  auto shares = Split(secret, k, n, [&](std::span<uint8_t> out) {
    for (uint8_t& b : out) b = static_cast<uint8_t>(counter++ * 151 + 17);
    return absl::OkStatus();
  });
  ASSERT_TRUE(shares.ok()) << shares.status();
  for (int size : {k - 1, k}) {
    if (size < 1) continue;
    std::vector<bool> pick(static_cast<size_t>(n), false);
    std::fill(pick.begin(), pick.begin() + size, true);
    int subsets = 0;
    do {
      std::vector<Share> chosen;
      for (int i = 0; i < n; ++i) {
        if (pick[static_cast<size_t>(i)]) chosen.push_back((*shares)[static_cast<size_t>(i)]);
      }
      auto combined = Combine(chosen);
      ASSERT_TRUE(combined.ok()) << combined.status();
      const bool equal = std::equal(secret.begin(), secret.end(), combined->data());
      EXPECT_EQ(equal, size == k) << k << "-of-" << n << " with " << size << " shares";
      ++subsets;
    } while (std::prev_permutation(pick.begin(), pick.end()));
    EXPECT_GT(subsets, 0);
  }
}

TEST(ShamirTest, TwoOfThree) {
  CheckSubsets(2, 3);
}
TEST(ShamirTest, ThreeOfFive) {
  CheckSubsets(3, 5);
}
TEST(ShamirTest, FiveOfFive) {
  CheckSubsets(5, 5);
}

TEST(ShamirTest, OneShareOfTwoOfTwoIsUniformlyConsistentWithEverySecret) {
  // For a 2-of-2 split, share 1 = secret ^ c (the one coefficient times 1):
  // for any secret byte there is exactly one coefficient giving any share
  // byte, so the share alone says nothing. Check the map is a bijection.
  for (int s = 0; s < 256; ++s) {
    std::vector<bool> seen(256, false);
    for (int c = 0; c < 256; ++c) {
      const uint8_t secret = static_cast<uint8_t>(s);
      auto shares = Split(std::span<const uint8_t>(&secret, 1), 2, 2, [c](std::span<uint8_t> out) {
        out[0] = static_cast<uint8_t>(c);
        return absl::OkStatus();
      });
      ASSERT_TRUE(shares.ok());
      const uint8_t y = (*shares)[1].value.data()[0];  // x = 2
      EXPECT_FALSE(seen[y]);
      seen[y] = true;
    }
  }
}

TEST(ShamirTest, RefusesBadParameters) {
  const std::vector<uint8_t> secret = Secret16();
  EXPECT_FALSE(Split(secret, 1, 3, Counting()).ok());
  EXPECT_FALSE(Split(secret, 4, 3, Counting()).ok());
  EXPECT_FALSE(Split(secret, 2, 256, Counting()).ok());
  EXPECT_FALSE(Split({}, 2, 3, Counting()).ok());
  EXPECT_FALSE(Split(secret, 2, 3, nullptr).ok());
  auto failing = [](std::span<uint8_t>) { return absl::UnavailableError("token RNG down"); };
  auto s = Split(secret, 2, 3, failing);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);

  auto shares = Split(secret, 2, 3, Counting());
  ASSERT_TRUE(shares.ok());
  std::vector<Share> twice = {(*shares)[0], (*shares)[0]};
  auto c = Combine(twice);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("given twice"), std::string::npos);
  std::vector<Share> uneven = {(*shares)[0], (*shares)[1]};
  uneven[1].value.Truncate(8);
  EXPECT_FALSE(Combine(uneven).ok());
  std::vector<Share> zero = {(*shares)[0], (*shares)[1]};
  zero[0].index = 0;
  EXPECT_FALSE(Combine(zero).ok());
  EXPECT_FALSE(Combine({}).ok());
}

}  // namespace
}  // namespace keywarden::pki::shamir
