// The PRIVATEKEYBLOB / PKCS#8 codec on the keys real Windows clients archived
// (shared/vectors/windows-key-archival, decrypted with the openssl CLI so the
// test does not depend on our own CMS code), on generated keys, and on every
// kind of damaged blob.
#include "pki/private_key_blob.h"

#include <algorithm>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/encoder.h>

#include "hsm/strings.h"
#include "pki/cmc.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_VECTORS
#error "KEYWARDEN_VECTORS must name shared/vectors/windows-key-archival"
#endif

namespace keywarden::testing {
namespace {

// A missing vector fails the test with its path.
std::vector<uint8_t> Vector(const std::string& name) {
  return ReadRequiredFile(std::string(KEYWARDEN_VECTORS) + "/" + name);
}

// Field offsets of an RSA PRIVATEKEYBLOB, as the vectors' README gives them.
struct Layout {
  explicit Layout(size_t bitlen) : full(bitlen / 8), half(bitlen / 16) {}
  size_t full, half;
  size_t modulus() const { return 20; }
  size_t prime1() const { return modulus() + full; }
  size_t prime2() const { return prime1() + half; }
  size_t exponent1() const { return prime2() + half; }
  size_t exponent2() const { return exponent1() + half; }
  size_t coefficient() const { return exponent2() + half; }
  size_t private_exponent() const { return coefficient() + half; }
  size_t end() const { return private_exponent() + full; }
};

// A Windows request's archived key, decrypted by the openssl CLI with the CA
// exchange key: the 1172-byte PRIVATEKEYBLOB, plus the parsed request.
struct Archived {
  pki::CmcRequest request;
  std::vector<uint8_t> blob;
};

Archived DecryptArchived(const std::string& file) {
  Archived out;
  auto req = pki::ParseCmcRequest(Vector(file));
  EXPECT_TRUE(req.ok()) << file << ": " << req.status();
  if (!req.ok() || !req->encrypted_key) return out;
  out.request = std::move(*req);
  TempDir dir;
  WriteFile(dir.File("env.der"), *out.request.encrypted_key);
  auto r = RunCommand("openssl cms -decrypt -binary -inform DER -in " + dir.File("env.der") +
                      " -inkey " + std::string(KEYWARDEN_VECTORS) + "/ca-exchange-key.pem -out " +
                      dir.File("blob.bin"));
  // The exit status, not the output file: on failure openssl still writes
  // random bytes there.
  EXPECT_EQ(r.exit_code, 0) << file << ": " << r.output;
  if (r.exit_code == 0) out.blob = ReadFile(dir.File("blob.bin"));
  return out;
}

ossl::UniquePtr<BIGNUM> LeNumber(const std::vector<uint8_t>& blob, size_t at, size_t len) {
  return ossl::UniquePtr<BIGNUM>(BN_lebin2bn(blob.data() + at, static_cast<int>(len), nullptr));
}

ossl::UniquePtr<BIGNUM> KeyNumber(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  EVP_PKEY_get_bn_param(key, name, &bn);
  return ossl::UniquePtr<BIGNUM>(bn);
}

std::vector<uint8_t> Bytes(const hsm::SecretBytes& s) {
  return {s.data(), s.data() + s.size()};
}

// The status failed with a message containing `part`.
::testing::AssertionResult FailsWith(const absl::Status& status, const std::string& part) {
  if (status.ok()) return ::testing::AssertionFailure() << "accepted; expected \"" << part << "\"";
  if (status.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "wrong code: " << status;
  }
  if (std::string(status.message()).find(part) == std::string::npos) {
    return ::testing::AssertionFailure() << status << " does not mention \"" << part << "\"";
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult FailsWith(const absl::StatusOr<T>& r, const std::string& part) {
  return FailsWith(r.status(), part);
}

std::vector<uint8_t> Sign(EVP_PKEY* key, const std::vector<uint8_t>& data) {
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, data.data(), data.size()) != 1) {
    return {};
  }
  std::vector<uint8_t> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, data.data(), data.size()) != 1) return {};
  sig.resize(len);
  return sig;
}

bool Verify(EVP_PKEY* key, const std::vector<uint8_t>& data, const std::vector<uint8_t>& sig) {
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  return EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) == 1 &&
         EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), data.data(), data.size()) == 1;
}

// A generated 1024-bit key's blob, shared by the negative tests (key
// generation is the slow part).
const std::vector<uint8_t>& GeneratedBlob() {
  static const std::vector<uint8_t> blob = [] {
    auto key = SoftwareRsaKey(1024);
    auto s = pki::SerializePrivateKeyBlob(key.get());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? Bytes(*s) : std::vector<uint8_t>();
  }();
  return blob;
}

const char* const kIssuer2Requests[] = {"user-enroll-1.der", "user-enroll-2.der",
                                        "user-enroll-3.der"};

TEST(PrivateKeyBlobTest, WindowsArchivedKeysParseAndBelongToTheirRequests) {
  std::vector<ossl::UniquePtr<EVP_PKEY>> keys;
  for (const char* file : kIssuer2Requests) {
    SCOPED_TRACE(file);
    Archived a = DecryptArchived(file);
    ASSERT_EQ(a.blob.size(), 1172u);

    pki::KeySpec spec = pki::KeySpec::kSignature;
    auto key = pki::ParsePrivateKeyBlob(a.blob, &spec);
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(spec, pki::KeySpec::kExchange);
    EXPECT_EQ(EVP_PKEY_get_bits(key->get()), 2048);

    EVP_PKEY* request_key = a.request.pkcs10.public_key();
    EXPECT_TRUE(pki::CheckKeyPairMatches(key->get(), request_key).ok());
    const std::vector<uint8_t> message = {'a', 'r', 'c', 'h', 'i', 'v', 'e', 'd'};
    auto sig = Sign(key->get(), message);
    ASSERT_FALSE(sig.empty());
    EXPECT_TRUE(Verify(request_key, message, sig));

    // What Windows wrote is exactly what we would write for the same key.
    auto again = pki::SerializePrivateKeyBlob(key->get());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(Bytes(*again), a.blob);
    keys.push_back(std::move(*key));
  }

  auto ca = pki::ParsePrivateKeyPlaintext(Vector("ca-exchange-key.pk8.der"), nullptr, nullptr);
  ASSERT_TRUE(ca.ok()) << ca.status();
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_NE(EVP_PKEY_eq(keys[i].get(), ca->get()), 1) << i;
    for (size_t j = i + 1; j < keys.size(); ++j) {
      EXPECT_NE(EVP_PKEY_eq(keys[i].get(), keys[j].get()), 1) << i << " vs " << j;
    }
  }
}

TEST(PrivateKeyBlobTest, UserEnroll3HasPrime1BelowPrime2AndStillParses) {
  Archived a = DecryptArchived("user-enroll-3.der");
  ASSERT_EQ(a.blob.size(), 1172u);
  const Layout l(2048);
  auto prime1 = LeNumber(a.blob, l.prime1(), l.half);
  auto prime2 = LeNumber(a.blob, l.prime2(), l.half);
  ASSERT_LT(BN_cmp(prime1.get(), prime2.get()), 0) << "the vector no longer has prime1 < prime2";

  auto key = pki::ParsePrivateKeyBlob(a.blob, nullptr);
  ASSERT_TRUE(key.ok()) << key.status();
  // OpenSSL is given the primes in Windows' order, the coefficient unchanged.
  EXPECT_EQ(BN_cmp(KeyNumber(key->get(), OSSL_PKEY_PARAM_RSA_FACTOR1).get(), prime1.get()), 0);
  EXPECT_EQ(BN_cmp(KeyNumber(key->get(), OSSL_PKEY_PARAM_RSA_FACTOR2).get(), prime2.get()), 0);
  EXPECT_TRUE(pki::CheckKeyPairMatches(key->get(), a.request.pkcs10.public_key()).ok());
}

TEST(PrivateKeyBlobTest, GeneratedKeysRoundTripByteForByte) {
  for (int bits : {512, 1024, 2048, 3072}) {
    SCOPED_TRACE(bits);
    auto key = SoftwareRsaKey(bits);
    ASSERT_TRUE(key);
    auto blob = pki::SerializePrivateKeyBlob(key.get());
    ASSERT_TRUE(blob.ok()) << blob.status();
    EXPECT_EQ(blob->size(), pki::PrivateKeyBlobSize(static_cast<uint32_t>(bits)));
    pki::KeySpec spec = pki::KeySpec::kSignature;
    auto parsed = pki::ParsePrivateKeyBlob(blob->span(), &spec);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(spec, pki::KeySpec::kExchange);
    EXPECT_EQ(EVP_PKEY_eq(parsed->get(), key.get()), 1);
    EXPECT_TRUE(pki::CheckKeyPairMatches(parsed->get(), key.get()).ok());
    auto again = pki::SerializePrivateKeyBlob(parsed->get());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(Bytes(*again), Bytes(*blob));
  }
}

TEST(PrivateKeyBlobTest, SignatureKeySpecRoundTrips) {
  auto key = SoftwareRsaKey(1024);
  auto blob = pki::SerializePrivateKeyBlob(key.get(), pki::kCalgRsaSign);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(blob->data()[4], 0x00);
  EXPECT_EQ(blob->data()[5], 0x24);
  pki::KeySpec spec = pki::KeySpec::kExchange;
  auto parsed = pki::ParsePrivateKeyBlob(blob->span(), &spec);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(spec, pki::KeySpec::kSignature);

  bool was_blob = false;
  uint32_t alg = 0;
  auto plain = pki::ParsePrivateKeyPlaintext(blob->span(), &was_blob, &alg);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(was_blob);
  EXPECT_EQ(alg, pki::kCalgRsaSign);
}

// Windows' other prime order, made from a generated key: prime1 the smaller
// prime, coefficient prime2^-1 mod prime1.
TEST(PrivateKeyBlobTest, SmallerPrimeFirstIsAcceptedFromAnySource) {
  auto key = SoftwareRsaKey(1024);
  auto blob = pki::SerializePrivateKeyBlob(key.get());
  ASSERT_TRUE(blob.ok());
  std::vector<uint8_t> b = Bytes(*blob);
  const Layout l(1024);
  auto p = LeNumber(b, l.prime1(), l.half), q = LeNumber(b, l.prime2(), l.half);
  auto dp = LeNumber(b, l.exponent1(), l.half), dq = LeNumber(b, l.exponent2(), l.half);
  // OpenSSL usually writes the larger prime first; put the smaller first.
  if (BN_cmp(p.get(), q.get()) > 0) {
    std::swap(p, q);
    std::swap(dp, dq);
  }
  ossl::UniquePtr<BN_CTX> ctx(BN_CTX_new());
  ossl::UniquePtr<BIGNUM> coefficient(BN_mod_inverse(nullptr, q.get(), p.get(), ctx.get()));
  ASSERT_TRUE(coefficient);
  BN_bn2lebinpad(p.get(), b.data() + l.prime1(), static_cast<int>(l.half));
  BN_bn2lebinpad(q.get(), b.data() + l.prime2(), static_cast<int>(l.half));
  BN_bn2lebinpad(dp.get(), b.data() + l.exponent1(), static_cast<int>(l.half));
  BN_bn2lebinpad(dq.get(), b.data() + l.exponent2(), static_cast<int>(l.half));
  BN_bn2lebinpad(coefficient.get(), b.data() + l.coefficient(), static_cast<int>(l.half));

  auto parsed = pki::ParsePrivateKeyBlob(b, nullptr);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(BN_cmp(KeyNumber(parsed->get(), OSSL_PKEY_PARAM_RSA_FACTOR1).get(), p.get()), 0);
  ASSERT_LT(BN_cmp(p.get(), q.get()), 0);
  EXPECT_TRUE(pki::CheckKeyPairMatches(parsed->get(), key.get()).ok());
  const std::vector<uint8_t> message = {1, 2, 3};
  EXPECT_TRUE(Verify(key.get(), message, Sign(parsed->get(), message)));
}

TEST(PrivateKeyBlobTest, EveryDamagedFieldIsRefusedByName) {
  const std::vector<uint8_t>& good = GeneratedBlob();
  ASSERT_FALSE(good.empty());
  ASSERT_TRUE(pki::ParsePrivateKeyBlob(good, nullptr).ok());
  const Layout l(1024);
  auto changed = [&](size_t at, uint8_t value) {
    auto b = good;
    b[at] = value;
    return pki::ParsePrivateKeyBlob(b, nullptr);
  };
  auto flipped = [&](size_t at) { return changed(at, static_cast<uint8_t>(good[at] ^ 0x01)); };

  EXPECT_TRUE(FailsWith(changed(0, 0x06), "bType is 0x06 (PUBLICKEYBLOB)"));
  EXPECT_TRUE(FailsWith(changed(0, 0x08), "bType is 0x08"));
  EXPECT_TRUE(FailsWith(changed(1, 0x03), "bVersion is 0x03"));
  EXPECT_TRUE(FailsWith(changed(2, 0x01), "reserved is 0x0001"));
  EXPECT_TRUE(FailsWith(changed(3, 0x80), "reserved is 0x8000"));
  EXPECT_TRUE(FailsWith(changed(5, 0x66), "aiKeyAlg is 0x00006600"));
  EXPECT_TRUE(FailsWith(changed(6, 0x01), "aiKeyAlg is 0x0001a400"));
  EXPECT_TRUE(FailsWith(changed(11, '1'), "magic is RSA1"));
  EXPECT_TRUE(FailsWith(changed(8, 'X'), "magic is 0x32415358"));

  auto with_bitlen = [&](uint32_t bits) {
    auto b = good;
    for (int i = 0; i < 4; ++i)
      b[12 + static_cast<size_t>(i)] = static_cast<uint8_t>(bits >> (8 * i));
    return pki::ParsePrivateKeyBlob(b, nullptr);
  };
  EXPECT_TRUE(FailsWith(with_bitlen(1000), "bitlen 1000 is not a multiple of 16"));
  EXPECT_TRUE(FailsWith(with_bitlen(496), "bitlen 496"));
  EXPECT_TRUE(FailsWith(with_bitlen(16400), "bitlen 16400"));
  EXPECT_TRUE(FailsWith(with_bitlen(0), "bitlen 0"));
  // A bitlen the length does not fit either way.
  EXPECT_TRUE(FailsWith(with_bitlen(2048), "truncated"));
  EXPECT_TRUE(FailsWith(with_bitlen(512), "trailing"));

  EXPECT_TRUE(FailsWith(changed(16, 0x00), "pubexp 65536 is not an odd number"));
  EXPECT_TRUE(FailsWith(changed(18, 0x00), "pubexp 1 is not an odd number"));
  EXPECT_TRUE(FailsWith(changed(16, 0x03), "privateExponent * pubexp is not 1"));

  // One byte short (copied, not pop_back: GCC 12 at -O3 warns about that).
  const std::vector<uint8_t> shorter(good.begin(), good.end() - 1);
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(shorter, nullptr), "truncated: 595 bytes"));
  auto longer = good;
  longer.push_back(0);
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(longer, nullptr), "1 trailing bytes"));
  EXPECT_TRUE(FailsWith(
      pki::ParsePrivateKeyBlob(std::vector<uint8_t>(good.begin(), good.begin() + 19), nullptr),
      "shorter than the 20-byte header"));

  EXPECT_TRUE(FailsWith(flipped(l.modulus() + 60), "modulus is not prime1 * prime2"));
  EXPECT_TRUE(FailsWith(flipped(l.prime1() + 3), "modulus is not prime1 * prime2"));
  EXPECT_TRUE(FailsWith(flipped(l.prime2() + 3), "modulus is not prime1 * prime2"));
  EXPECT_TRUE(FailsWith(flipped(l.exponent1() + 9), "exponent1 is not"));
  EXPECT_TRUE(FailsWith(flipped(l.exponent2() + 9), "exponent2 is not"));
  EXPECT_TRUE(FailsWith(flipped(l.coefficient() + 9), "coefficient is not prime2^-1 mod prime1"));
  EXPECT_TRUE(FailsWith(flipped(l.private_exponent() + 9), "privateExponent * pubexp is not 1"));

  // Zeroed primes must be refused before they are used as moduli.
  auto zero_prime = good;
  std::fill(zero_prime.begin() + static_cast<long>(l.prime1()),
            zero_prime.begin() + static_cast<long>(l.prime2()), 0);
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(zero_prime, nullptr), "prime1 is 0 or 1"));
}

// Numbers that pass every arithmetic check but whose prime1 is a product
// of two primes: only the primality test notices.
TEST(PrivateKeyBlobTest, CompositePrime1IsRefused) {
  ossl::UniquePtr<BN_CTX> ctx(BN_CTX_new());
  auto bn = [] { return ossl::UniquePtr<BIGNUM>(BN_new()); };
  auto p = bn(), q = bn(), r1 = bn(), r2 = bn(), n = bn(), e = bn(), p1 = bn(), q1 = bn();
  auto g = bn(), lambda = bn(), d = bn(), dp = bn(), dq = bn(), qinv = bn();
  ASSERT_TRUE(BN_set_word(e.get(), 65537));
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 100);
    ASSERT_TRUE(BN_generate_prime_ex2(r1.get(), 256, 0, nullptr, nullptr, nullptr, ctx.get()));
    ASSERT_TRUE(BN_generate_prime_ex2(r2.get(), 256, 0, nullptr, nullptr, nullptr, ctx.get()));
    ASSERT_TRUE(BN_generate_prime_ex2(q.get(), 512, 0, nullptr, nullptr, nullptr, ctx.get()));
    ASSERT_TRUE(BN_mul(p.get(), r1.get(), r2.get(), ctx.get()));
    ASSERT_TRUE(BN_mul(n.get(), p.get(), q.get(), ctx.get()));
    if (BN_num_bits(n.get()) != 1024 || BN_num_bits(p.get()) > 512) continue;
    ASSERT_TRUE(BN_sub(p1.get(), p.get(), BN_value_one()));
    ASSERT_TRUE(BN_sub(q1.get(), q.get(), BN_value_one()));
    ASSERT_TRUE(BN_gcd(g.get(), p1.get(), q1.get(), ctx.get()));
    ASSERT_TRUE(BN_mul(lambda.get(), p1.get(), q1.get(), ctx.get()));
    ASSERT_TRUE(BN_div(lambda.get(), nullptr, lambda.get(), g.get(), ctx.get()));
    if (BN_mod_inverse(d.get(), e.get(), lambda.get(), ctx.get()) == nullptr) continue;
    if (BN_mod_inverse(qinv.get(), q.get(), p.get(), ctx.get()) == nullptr) continue;
    break;
  }
  ASSERT_TRUE(BN_mod(dp.get(), d.get(), p1.get(), ctx.get()));
  ASSERT_TRUE(BN_mod(dq.get(), d.get(), q1.get(), ctx.get()));

  std::vector<uint8_t> b = GeneratedBlob();  // its header: 1024 bits, e = 65537
  ASSERT_EQ(b.size(), pki::PrivateKeyBlobSize(1024));
  const Layout l(1024);
  for (auto [bn_value, at, len] :
       {std::tuple{n.get(), l.modulus(), l.full}, std::tuple{p.get(), l.prime1(), l.half},
        std::tuple{q.get(), l.prime2(), l.half}, std::tuple{dp.get(), l.exponent1(), l.half},
        std::tuple{dq.get(), l.exponent2(), l.half},
        std::tuple{qinv.get(), l.coefficient(), l.half},
        std::tuple{d.get(), l.private_exponent(), l.full}}) {
    ASSERT_EQ(BN_bn2lebinpad(bn_value, b.data() + at, static_cast<int>(len)),
              static_cast<int>(len));
  }
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(b, nullptr), "prime1 is not prime"));
}

TEST(PrivateKeyBlobTest, EmptyAndRandomInputIsRefusedNeverACrash) {
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob({}, nullptr), "0 bytes, shorter than the"));
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext({}, nullptr, nullptr), "empty"));

  std::mt19937 rng(20240611);
  auto random_bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  for (int i = 0; i < 500; ++i) {
    auto v = random_bytes(rng() % 2000);
    EXPECT_FALSE(pki::ParsePrivateKeyBlob(v, nullptr).ok());
    EXPECT_FALSE(pki::ParsePrivateKeyPlaintext(v, nullptr, nullptr).ok());
  }
  // Random numbers behind a valid header, so the arithmetic checks see them.
  const std::vector<uint8_t>& good = GeneratedBlob();
  ASSERT_FALSE(good.empty());
  for (int i = 0; i < 200; ++i) {
    auto v = random_bytes(good.size());
    std::copy(good.begin(), good.begin() + 20, v.begin());
    EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(v, nullptr), "PRIVATEKEYBLOB: "));
  }
}

// Which check must catch a change at each byte of a 2048-bit blob.
std::vector<std::string> ExpectedChecks(size_t at) {
  const Layout l(2048);
  if (at == 0) return {"bType"};
  if (at == 1) return {"bVersion"};
  if (at < 4) return {"reserved"};
  if (at < 8) return {"aiKeyAlg"};
  if (at < 12) return {"magic"};
  if (at < 16) return {"bitlen", "truncated", "trailing"};
  if (at < 20) return {"pubexp"};
  if (at < l.exponent1()) return {"modulus is not prime1 * prime2"};
  if (at < l.exponent2()) return {"exponent1"};
  if (at < l.coefficient()) return {"exponent2"};
  if (at < l.private_exponent()) return {"coefficient"};
  return {"privateExponent * pubexp"};
}

TEST(PrivateKeyBlobTest, EverySingleByteChangeToARealBlobIsCaughtByItsCheck) {
  Archived a = DecryptArchived("user-enroll-3.der");
  ASSERT_EQ(a.blob.size(), 1172u);
  auto original = pki::ParsePrivateKeyBlob(a.blob, nullptr);
  ASSERT_TRUE(original.ok());

  int tried = 0;
  for (size_t at = 0; at < a.blob.size(); ++at) {
    // Every possible value in the header; three masks (low bit, high bit,
    // every bit) in the numbers, where each check covers a whole field.
    std::vector<uint8_t> masks;
    if (at < 20) {
      for (int m = 1; m < 256; ++m) masks.push_back(static_cast<uint8_t>(m));
    } else {
      masks = {0x01, 0x80, 0xff};
    }
    for (uint8_t mask : masks) {
      auto b = a.blob;
      b[at] ^= mask;
      ++tried;
      pki::KeySpec spec = pki::KeySpec::kExchange;
      auto r = pki::ParsePrivateKeyBlob(b, &spec);
      if (at == 5 && mask == 0x80) {
        // 0xA4 ^ 0x80 = 0x24: CALG_RSA_KEYX becomes CALG_RSA_SIGN, the other
        // valid aiKeyAlg. The same key, reported as a signature key.
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(spec, pki::KeySpec::kSignature);
        EXPECT_EQ(EVP_PKEY_eq(r->get(), original->get()), 1);
        continue;
      }
      ASSERT_FALSE(r.ok()) << "accepted a change at byte " << at << " mask " << int{mask};
      ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
      const std::string message(r.status().message());
      bool named = false;
      for (const std::string& part : ExpectedChecks(at)) {
        if (message.find(part) != std::string::npos) named = true;
      }
      EXPECT_TRUE(named) << "byte " << at << " mask " << int{mask} << ": " << message;
    }
  }
  EXPECT_GT(tried, 8000);
}

TEST(PrivateKeyBlobTest, PlaintextAcceptsPkcs8Rsa) {
  bool was_blob = true;
  uint32_t alg = 1;
  const auto der = Vector("ca-exchange-key.pk8.der");
  auto ca = pki::ParsePrivateKeyPlaintext(der, &was_blob, &alg);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_FALSE(was_blob);
  EXPECT_EQ(alg, 0u);
  EXPECT_EQ(EVP_PKEY_get_bits(ca->get()), 2048);

  // ToPkcs8 and back: the same key.
  auto p8 = pki::ToPkcs8(ca->get());
  ASSERT_TRUE(p8.ok()) << p8.status();
  EXPECT_EQ(p8->data()[0], 0x30);
  auto again = pki::ParsePrivateKeyPlaintext(p8->span(), &was_blob, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(EVP_PKEY_eq(again->get(), ca->get()), 1);
  EXPECT_TRUE(pki::CheckKeyPairMatches(again->get(), ca->get()).ok());
  // And the blob of it round-trips through the plaintext parser too.
  auto blob = pki::SerializePrivateKeyBlob(again->get());
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto from_blob = pki::ParsePrivateKeyPlaintext(blob->span(), &was_blob, &alg);
  ASSERT_TRUE(from_blob.ok()) << from_blob.status();
  EXPECT_TRUE(was_blob);
  EXPECT_EQ(alg, pki::kCalgRsaKeyx);
  EXPECT_EQ(EVP_PKEY_eq(from_blob->get(), ca->get()), 1);

  auto trailing = der;
  trailing.push_back(0);
  EXPECT_TRUE(
      FailsWith(pki::ParsePrivateKeyPlaintext(trailing, nullptr, nullptr), "1 trailing bytes"));
  auto cut = der;
  cut.resize(cut.size() - 1);
  EXPECT_TRUE(
      FailsWith(pki::ParsePrivateKeyPlaintext(cut, nullptr, nullptr), "not a DER PrivateKeyInfo"));
  EXPECT_TRUE(
      FailsWith(pki::ParsePrivateKeyPlaintext(std::vector<uint8_t>{0x42, 0}, nullptr, nullptr),
                "neither a PRIVATEKEYBLOB"));
}

// OpenSSL's own PKCS#8 encoder, for comparison with ToPkcs8's direct writer.
std::vector<uint8_t> EncoderPkcs8(EVP_PKEY* key) {
  std::unique_ptr<OSSL_ENCODER_CTX, decltype(&OSSL_ENCODER_CTX_free)> ctx(
      OSSL_ENCODER_CTX_new_for_pkey(key, EVP_PKEY_KEYPAIR, "DER", "PrivateKeyInfo", nullptr),
      OSSL_ENCODER_CTX_free);
  unsigned char* der = nullptr;
  size_t len = 0;
  if (!ctx || OSSL_ENCODER_to_data(ctx.get(), &der, &len) != 1) return {};
  std::vector<uint8_t> out(der, der + len);
  OPENSSL_clear_free(der, len);
  return out;
}

TEST(PrivateKeyBlobTest, ToPkcs8WritesTheBytesOfOpenSslAndTheWindowsVector) {
  // The vector's PKCS#8 (byte-identical to `openssl pkcs8 -topk8 -nocrypt`
  // of it): parsed and written again, the very same bytes.
  const auto der = Vector("ca-exchange-key.pk8.der");
  ASSERT_EQ(der.size(), 1216u);
  auto ca = pki::ParsePrivateKeyPlaintext(der, nullptr, nullptr);
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto p8 = pki::ToPkcs8(ca->get());
  ASSERT_TRUE(p8.ok()) << p8.status();
  EXPECT_EQ(std::vector<uint8_t>(p8->span().begin(), p8->span().end()), der);

  // Generated keys of several sizes (lengths under and over 128 and 256
  // bytes, numbers with and without a leading 0x00), e = 3 and 65537, and
  // a Windows blob's key: the same bytes as OpenSSL's encoder.
  std::vector<ossl::UniquePtr<EVP_PKEY>> keys;
  for (int bits : {512, 1024, 2048, 3072}) keys.push_back(SoftwareRsaKey(bits));
  {
    ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
    ossl::UniquePtr<BIGNUM> three(BN_new());
    BN_set_word(three.get(), 3);
    EVP_PKEY* raw = nullptr;
    ASSERT_TRUE(ctx && EVP_PKEY_keygen_init(ctx.get()) == 1 &&
                EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 1536) == 1 &&
                EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx.get(), three.get()) == 1 &&
                EVP_PKEY_keygen(ctx.get(), &raw) == 1);
    keys.emplace_back(raw);
  }
  Archived a = DecryptArchived("user-enroll-3.der");
  auto windows = pki::ParsePrivateKeyBlob(a.blob, nullptr);
  ASSERT_TRUE(windows.ok()) << windows.status();
  keys.push_back(std::move(*windows));
  for (const auto& key : keys) {
    ASSERT_TRUE(key);
    auto mine = pki::ToPkcs8(key.get());
    ASSERT_TRUE(mine.ok()) << mine.status();
    const std::vector<uint8_t> theirs = EncoderPkcs8(key.get());
    ASSERT_FALSE(theirs.empty());
    EXPECT_EQ(std::vector<uint8_t>(mine->span().begin(), mine->span().end()), theirs)
        << EVP_PKEY_get_bits(key.get()) << "-bit key";
  }
  // Other keys still go through OpenSSL's encoder.
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  auto ec_p8 = pki::ToPkcs8(ec.get());
  ASSERT_TRUE(ec_p8.ok()) << ec_p8.status();
  EXPECT_EQ(std::vector<uint8_t>(ec_p8->span().begin(), ec_p8->span().end()),
            EncoderPkcs8(ec.get()));
}

TEST(PrivateKeyBlobTest, PlaintextRefusesEcAndInconsistentPkcs8) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  ASSERT_TRUE(ec);
  auto p8 = pki::ToPkcs8(ec.get());
  ASSERT_TRUE(p8.ok()) << p8.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext(p8->span(), nullptr, nullptr),
                        "the key is EC; only RSA keys can be archived"));
  EXPECT_TRUE(FailsWith(pki::SerializePrivateKeyBlob(ec.get()), "the key is EC, not RSA"));
  EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(ec.get(), ec.get()), "not RSA"));

  // An RSA key whose coefficient is off by one, built without OpenSSL's
  // checks, then written as PKCS#8: the key-pair check refuses it.
  auto good = SoftwareRsaKey(1024);
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  std::vector<ossl::UniquePtr<BIGNUM>> keep;
  for (const char* name :
       {OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1}) {
    keep.push_back(KeyNumber(good.get(), name));
    ASSERT_TRUE(keep.back()) << name;
    if (std::string(name) == OSSL_PKEY_PARAM_RSA_COEFFICIENT1) {
      BN_add_word(keep.back().get(), 1);
    }
    OSSL_PARAM_BLD_push_BN(bld.get(), name, keep.back().get());
  }
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  ASSERT_EQ(EVP_PKEY_fromdata_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()), 1);
  ossl::UniquePtr<EVP_PKEY> bad(raw);
  auto bad_p8 = pki::ToPkcs8(bad.get());
  ASSERT_TRUE(bad_p8.ok()) << bad_p8.status();
  EXPECT_TRUE(
      FailsWith(pki::ParsePrivateKeyPlaintext(bad_p8->span(), nullptr, nullptr), "not consistent"));
  // The blob writer writes it, and the blob reader names the bad field.
  auto bad_blob = pki::SerializePrivateKeyBlob(bad.get());
  ASSERT_TRUE(bad_blob.ok()) << bad_blob.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyBlob(bad_blob->span(), nullptr), "coefficient"));
}

TEST(PrivateKeyBlobTest, SerializeRefusesWhatTheFormatCannotHold) {
  auto key = SoftwareRsaKey(1024);
  EXPECT_TRUE(FailsWith(pki::SerializePrivateKeyBlob(key.get(), 0x6610), "aiKeyAlg 0x00006610"));
  EXPECT_TRUE(FailsWith(pki::SerializePrivateKeyBlob(nullptr), "no key"));
  // Public half only: no private numbers to write.
  auto pub = pki::ParsePrivateKeyPlaintext(Vector("ca-exchange-key.pk8.der"), nullptr, nullptr);
  ASSERT_TRUE(pub.ok());
  ossl::UniquePtr<EVP_PKEY> public_only;
  {
    unsigned char* der = nullptr;
    int len = i2d_PUBKEY(pub->get(), &der);
    ASSERT_GT(len, 0);
    const unsigned char* p = der;
    public_only.reset(d2i_PUBKEY(nullptr, &p, len));
    OPENSSL_free(der);
  }
  ASSERT_TRUE(public_only);
  EXPECT_TRUE(FailsWith(pki::SerializePrivateKeyBlob(public_only.get()), "not readable"));
  // A 1000-bit modulus has no blob form (bitlen must be a multiple of 16).
  ossl::UniquePtr<EVP_PKEY> odd(EVP_RSA_gen(1000));
  ASSERT_TRUE(odd);
  EXPECT_TRUE(FailsWith(pki::SerializePrivateKeyBlob(odd.get()), "1000-bit modulus"));
}

TEST(PrivateKeyBlobTest, KeyVerificationRefusesAForeignKey) {
  auto mine = SoftwareRsaKey(2048);
  auto other = SoftwareRsaKey(2048);
  EXPECT_TRUE(pki::CheckKeyPairMatches(mine.get(), mine.get()).ok());
  EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(mine.get(), other.get()),
                        "the private key does not belong to the public key"));
  EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(nullptr, other.get()), "missing key"));

  // The right public numbers but a wrong private exponent (and no CRT
  // values to fall back on): only the decryption notices.
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  auto n = KeyNumber(mine.get(), OSSL_PKEY_PARAM_RSA_N);
  auto e = KeyNumber(mine.get(), OSSL_PKEY_PARAM_RSA_E);
  auto d = KeyNumber(mine.get(), OSSL_PKEY_PARAM_RSA_D);
  ASSERT_TRUE(n && e && d);
  BN_add_word(d.get(), 2);
  OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get());
  OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get());
  OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_D, d.get());
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  ASSERT_EQ(EVP_PKEY_fromdata_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()), 1);
  ossl::UniquePtr<EVP_PKEY> wrong_d(raw);
  EXPECT_EQ(EVP_PKEY_eq(wrong_d.get(), mine.get()), 1);
  EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(wrong_d.get(), mine.get()), "decrypt"));

  // A Windows archived key against another request's public key.
  Archived one = DecryptArchived("user-enroll-1.der");
  Archived two = DecryptArchived("user-enroll-2.der");
  ASSERT_EQ(one.blob.size(), 1172u);
  auto key = pki::ParsePrivateKeyBlob(one.blob, nullptr);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(key->get(), two.request.pkcs10.public_key()),
                        "does not belong"));
  // Each Windows key decrypts for its own request.
  for (const Archived* a : {&one, &two}) {
    auto own = pki::ParsePrivateKeyBlob(a->blob, nullptr);
    ASSERT_TRUE(own.ok()) << own.status();
    EXPECT_TRUE(pki::CheckKeyPairMatches(own->get(), a->request.pkcs10.public_key()).ok());
  }
}

// With the CRT numbers (as every blob and PKCS#8 key has them) the
// decryption is done with them: a wrong exponent1, exponent2 or
// coefficient makes it give another number, whatever d is.
TEST(PrivateKeyBlobTest, KeyVerificationDecryptsWithTheCrtNumbers) {
  auto mine = SoftwareRsaKey(2048);
  const char* names[] = {OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
                         OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
                         OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
                         OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
  for (int wrong : {-1, 5, 6, 7}) {
    ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
    std::vector<ossl::UniquePtr<BIGNUM>> keep;
    for (int i = 0; i < 8; ++i) {
      keep.push_back(KeyNumber(mine.get(), names[i]));
      ASSERT_TRUE(keep.back()) << names[i];
      if (i == wrong) BN_add_word(keep.back().get(), 2);
      OSSL_PARAM_BLD_push_BN(bld.get(), names[i], keep.back().get());
    }
    ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
    ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
    EVP_PKEY* raw = nullptr;
    ASSERT_EQ(EVP_PKEY_fromdata_init(ctx.get()), 1);
    ASSERT_EQ(EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()), 1);
    ossl::UniquePtr<EVP_PKEY> key(raw);
    if (wrong < 0) {
      for (int round = 0; round < 20; ++round) {
        EXPECT_TRUE(pki::CheckKeyPairMatches(key.get(), mine.get()).ok());
      }
    } else {
      EXPECT_TRUE(FailsWith(pki::CheckKeyPairMatches(key.get(), mine.get()),
                            "the private key does not decrypt what the public key encrypted"))
          << names[wrong];
    }
  }
}

// A PKCS#8 RSA key gets the blob's consistency checks, which name the bad
// number: here a coefficient off by one, and a "prime" that is the product
// of two primes (n = p*q and e*d = 1 mod lcm(p-1, q-1) still hold, so only
// the primality test can catch it).
TEST(PrivateKeyBlobTest, Pkcs8ChecksNameTheBadNumber) {
  auto from_numbers = [](const std::vector<const BIGNUM*>& v) {
    const char* names[] = {OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
                           OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
                           OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
                           OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
    for (size_t i = 0; i < v.size(); ++i) OSSL_PARAM_BLD_push_BN(bld.get(), names[i], v[i]);
    ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
    ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
    EVP_PKEY* raw = nullptr;
    EVP_PKEY_fromdata_init(ctx.get());
    EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get());
    auto p8 = pki::ToPkcs8(raw);
    EVP_PKEY_free(raw);
    return p8;
  };

  auto good = SoftwareRsaKey(1024);
  std::vector<ossl::UniquePtr<BIGNUM>> k;
  for (const char* name :
       {OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1}) {
    k.push_back(KeyNumber(good.get(), name));
    ASSERT_TRUE(k.back()) << name;
  }
  auto ok = from_numbers({k[0].get(), k[1].get(), k[2].get(), k[3].get(), k[4].get(), k[5].get(),
                          k[6].get(), k[7].get()});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(pki::ParsePrivateKeyPlaintext(ok->span(), nullptr, nullptr).ok());
  BN_add_word(k[7].get(), 1);
  auto bad_coefficient = from_numbers({k[0].get(), k[1].get(), k[2].get(), k[3].get(), k[4].get(),
                                       k[5].get(), k[6].get(), k[7].get()});
  ASSERT_TRUE(bad_coefficient.ok()) << bad_coefficient.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext(bad_coefficient->span(), nullptr, nullptr),
                        "not consistent: coefficient is not prime2^-1 mod prime1"));
  // The coefficient plus prime1 is still an inverse of prime2 mod prime1,
  // but not the one in [0, prime1) the format holds.
  BN_sub_word(k[7].get(), 1);
  ASSERT_EQ(BN_add(k[7].get(), k[7].get(), k[3].get()), 1);
  auto unreduced = from_numbers({k[0].get(), k[1].get(), k[2].get(), k[3].get(), k[4].get(),
                                 k[5].get(), k[6].get(), k[7].get()});
  ASSERT_TRUE(unreduced.ok()) << unreduced.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext(unreduced->span(), nullptr, nullptr),
                        "not consistent: coefficient is not prime2^-1 mod prime1"));
  // d + (p-1) still gives e*d = 1 mod p-1 but not mod q-1 (e*(p-1) is
  // not 0 mod q-1): refused as not 1 mod lcm(p-1, q-1).
  ASSERT_EQ(BN_sub(k[7].get(), k[7].get(), k[3].get()), 1);
  ossl::UniquePtr<BIGNUM> d_plus(BN_dup(k[2].get()));
  ossl::UniquePtr<BIGNUM> p_minus_1(BN_dup(k[3].get()));
  ASSERT_EQ(BN_sub_word(p_minus_1.get(), 1), 1);
  ASSERT_EQ(BN_add(d_plus.get(), d_plus.get(), p_minus_1.get()), 1);
  auto bad_d = from_numbers({k[0].get(), k[1].get(), d_plus.get(), k[3].get(), k[4].get(),
                             k[5].get(), k[6].get(), k[7].get()});
  ASSERT_TRUE(bad_d.ok()) << bad_d.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext(bad_d->span(), nullptr, nullptr),
                        "privateExponent * pubexp is not 1 mod lcm(prime1 - 1, prime2 - 1)"));

  // p = a*b (a, b prime), q prime; d, the CRT values and the coefficient
  // computed from them exactly as for a real key.
  ossl::UniquePtr<BN_CTX> ctx(BN_CTX_new());
  auto bn = [] { return ossl::UniquePtr<BIGNUM>(BN_new()); };
  auto a = bn(), b = bn(), p = bn(), q = bn(), n = bn(), e = bn(), d = bn(), dp = bn(), dq = bn(),
       qinv = bn(), p1 = bn(), q1 = bn(), g = bn(), lambda = bn(), phi = bn();
  ASSERT_EQ(BN_set_word(e.get(), 65537), 1);
  bool made = false;
  for (int attempt = 0; attempt < 20 && !made; ++attempt) {
    ASSERT_EQ(BN_generate_prime_ex(a.get(), 256, 0, nullptr, nullptr, nullptr), 1);
    ASSERT_EQ(BN_generate_prime_ex(b.get(), 256, 0, nullptr, nullptr, nullptr), 1);
    ASSERT_EQ(BN_generate_prime_ex(q.get(), 512, 0, nullptr, nullptr, nullptr), 1);
    ASSERT_EQ(BN_mul(p.get(), a.get(), b.get(), ctx.get()), 1);
    if (BN_num_bits(p.get()) != 512 || BN_cmp(p.get(), q.get()) == 0) continue;
    BN_sub(p1.get(), p.get(), BN_value_one());
    BN_sub(q1.get(), q.get(), BN_value_one());
    BN_gcd(g.get(), p1.get(), q1.get(), ctx.get());
    BN_mul(phi.get(), p1.get(), q1.get(), ctx.get());
    BN_div(lambda.get(), nullptr, phi.get(), g.get(), ctx.get());
    made = BN_mod_inverse(d.get(), e.get(), lambda.get(), ctx.get()) != nullptr &&
           BN_mod_inverse(qinv.get(), q.get(), p.get(), ctx.get()) != nullptr;
  }
  ASSERT_TRUE(made);
  ASSERT_EQ(BN_mul(n.get(), p.get(), q.get(), ctx.get()), 1);
  BN_mod(dp.get(), d.get(), p1.get(), ctx.get());
  BN_mod(dq.get(), d.get(), q1.get(), ctx.get());
  auto composite =
      from_numbers({n.get(), e.get(), d.get(), p.get(), q.get(), dp.get(), dq.get(), qinv.get()});
  ASSERT_TRUE(composite.ok()) << composite.status();
  EXPECT_TRUE(FailsWith(pki::ParsePrivateKeyPlaintext(composite->span(), nullptr, nullptr),
                        "not consistent: prime1 is not prime"));
}

}  // namespace
}  // namespace keywarden::testing
