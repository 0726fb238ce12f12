#include "pki/private_key_blob.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm/strings.h"

namespace keywarden::pki {
namespace {

constexpr uint8_t kPrivateKeyBlobType = 0x07;  // PRIVATEKEYBLOB
constexpr uint8_t kPublicKeyBlobType = 0x06;   // PUBLICKEYBLOB
constexpr uint8_t kBlobVersion = 0x02;         // CUR_BLOB_VERSION
constexpr uint32_t kMagicRsa2 = 0x32415352;    // "RSA2" read little-endian
constexpr uint32_t kMagicRsa1 = 0x31415352;    // "RSA1": a public key blob
constexpr uint32_t kMinBits = 512;
constexpr uint32_t kMaxBits = 16384;

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(StrCat("PRIVATEKEYBLOB: ", what));
}

std::string Hex(uint32_t v, int digits) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "0x";
  for (int i = digits - 1; i >= 0; --i) out.push_back(kDigits[(v >> (4 * i)) & 0xf]);
  return out;
}

uint32_t Le16(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8;
}
uint32_t Le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

ossl::UniquePtr<BIGNUM> NewBn() {
  return ossl::UniquePtr<BIGNUM>(BN_new());
}

// OSSL_PARAM_free does not wipe the ordinary (non-secure) block that
// OSSL_PARAM_BLD_to_param copies the key's numbers into, so wipe each value
// first.
struct CleansingParamsDeleter {
  void operator()(OSSL_PARAM* params) const {
    for (OSSL_PARAM* p = params; p->key != nullptr; ++p) {
      if (p->data != nullptr) OPENSSL_cleanse(p->data, p->data_size);
    }
    OSSL_PARAM_free(params);
  }
};
using CleansingParams = std::unique_ptr<OSSL_PARAM, CleansingParamsDeleter>;

struct P8Deleter {
  void operator()(PKCS8_PRIV_KEY_INFO* p) const { PKCS8_PRIV_KEY_INFO_free(p); }
};
struct EncoderCtxDeleter {
  void operator()(OSSL_ENCODER_CTX* p) const { OSSL_ENCODER_CTX_free(p); }
};

// The blob's little-endian numbers, in blob order.
struct BlobNumbers {
  ossl::UniquePtr<BIGNUM> n, e, p, q, dp, dq, qinv, d;
};

// Reads `len` little-endian bytes at *offset as a BIGNUM. Secret numbers are
// flagged constant-time so the checks below do not leak them through timing.
ossl::UniquePtr<BIGNUM> ReadLe(std::span<const uint8_t> blob, size_t* offset, size_t len,
                               bool secret) {
  ossl::UniquePtr<BIGNUM> bn(BN_lebin2bn(blob.data() + *offset, static_cast<int>(len), nullptr));
  *offset += len;
  if (bn && secret) BN_set_flags(bn.get(), BN_FLG_CONSTTIME);
  return bn;
}

// a == b, where both are already known to be non-null.
bool Equal(const BIGNUM* a, const BIGNUM* b) {
  return BN_cmp(a, b) == 0;
}

// Checks that the numbers form one RSA key. The order matters for the
// error messages: the cheap modulus check first, then each derived value
// against what it must be, so a corrupted field is named as the culprit.
// `what` prefixes every message ("PRIVATEKEYBLOB", or the PKCS#8 wording).
absl::Status CheckConsistent(const BlobNumbers& k, uint32_t bitlen,
                             std::string_view what = "PRIVATEKEYBLOB") {
  ossl::UniquePtr<BN_CTX> ctx(BN_CTX_secure_new());
  if (!ctx) return absl::InternalError(StrCat(what, ": out of memory"));
  auto fail = [what] { return absl::InternalError(StrCat(what, ": OpenSSL arithmetic failed")); };
  auto Bad = [what](std::string_view why) {
    return absl::InvalidArgumentError(StrCat(what, ": ", why));
  };

  if (BN_is_zero(k.p.get()) || BN_is_one(k.p.get())) return Bad("prime1 is 0 or 1");
  if (BN_is_zero(k.q.get()) || BN_is_one(k.q.get())) return Bad("prime2 is 0 or 1");

  ossl::UniquePtr<BIGNUM> pq = NewBn();
  if (!pq || !BN_mul(pq.get(), k.p.get(), k.q.get(), ctx.get())) return fail();
  if (!Equal(pq.get(), k.n.get())) return Bad("modulus is not prime1 * prime2");
  if (BN_num_bits(k.n.get()) != static_cast<int>(bitlen)) {
    return Bad(StrCat("modulus is ", BN_num_bits(k.n.get()), " bits long, bitlen says ", bitlen));
  }
  if (Equal(k.p.get(), k.q.get())) return Bad("prime1 equals prime2");

  ossl::UniquePtr<BIGNUM> p1 = NewBn(), q1 = NewBn();
  if (!p1 || !q1 || !BN_sub(p1.get(), k.p.get(), BN_value_one()) ||
      !BN_sub(q1.get(), k.q.get(), BN_value_one())) {
    return fail();
  }
  BN_set_flags(p1.get(), BN_FLG_CONSTTIME);
  BN_set_flags(q1.get(), BN_FLG_CONSTTIME);

  // e*d = 1 mod lcm(p-1, q-1). Windows computes d mod phi and OpenSSL mod
  // lcm; either satisfies this, since lcm divides phi. A number is 1 mod
  // lcm(a, b) exactly when it is 1 mod a and 1 mod b, so this is checked
  // mod p-1 and mod q-1: no constant-time gcd of p-1 and q-1 (which cost
  // more than a third of these checks, tests/bench/archival_bench).
  ossl::UniquePtr<BIGNUM> r = NewBn();
  if (!r) return fail();
  for (const BIGNUM* m : {p1.get(), q1.get()}) {
    if (!BN_mod_mul(r.get(), k.d.get(), k.e.get(), m, ctx.get())) return fail();
    if (!BN_is_one(r.get())) {
      return Bad("privateExponent * pubexp is not 1 mod lcm(prime1 - 1, prime2 - 1)");
    }
  }

  if (!BN_mod(r.get(), k.d.get(), p1.get(), ctx.get())) return fail();
  if (!Equal(r.get(), k.dp.get())) return Bad("exponent1 is not privateExponent mod (prime1 - 1)");
  if (!BN_mod(r.get(), k.d.get(), q1.get(), ctx.get())) return fail();
  if (!Equal(r.get(), k.dq.get())) return Bad("exponent2 is not privateExponent mod (prime2 - 1)");

  // The coefficient is prime2^-1 mod prime1 whichever prime is larger
  // (user-enroll-3 has prime1 < prime2), which is OpenSSL's iqmp = q^-1 mod p.
  // The inverse mod p is the one number in [0, p) whose product with q is
  // 1 mod p: checked so, with a multiplication instead of a constant-time
  // modular inversion. Only a key that fails is inverted, to name why.
  if (BN_is_negative(k.qinv.get()) || BN_cmp(k.qinv.get(), k.p.get()) >= 0 ||
      !BN_mod_mul(r.get(), k.qinv.get(), k.q.get(), k.p.get(), ctx.get()) || !BN_is_one(r.get())) {
    ERR_clear_error();
    if (BN_mod_inverse(r.get(), k.q.get(), k.p.get(), ctx.get()) == nullptr) {
      ERR_clear_error();
      return Bad("prime2 has no inverse mod prime1");
    }
    return Bad("coefficient is not prime2^-1 mod prime1");
  }

  // Last, because it costs a modular exponentiation per prime: a Fermat test
  // (a^(p-1) = 1 mod p) rejects composite "primes". A full Miller-Rabin run
  // would take seconds at 16384 bits; the archival key check (a real
  // encrypt/decrypt) stands behind this for the adversarial corner. The
  // base is random in [2, p) (a fixed base 2 can be targeted with base-2
  // pseudoprimes; a random one cannot), and both primes are tested in one
  // BN_mod_exp_mont_consttime_x2, which OpenSSL runs as one dual
  // exponentiation for two 1024-bit moduli on CPUs with AVX-512 IFMA (as
  // for an RSA-2048 private-key operation) and as two otherwise.
  for (int i = 0; i < 2; ++i) {
    if (!BN_is_odd(i == 0 ? k.p.get() : k.q.get())) {
      return Bad(StrCat(i == 0 ? "prime1" : "prime2", " is even, not prime"));
    }
  }
  ossl::UniquePtr<BIGNUM> a1 = NewBn(), a2 = NewBn(), r2 = NewBn();
  if (!a1 || !a2 || !r2) return fail();
  for (auto [base, prime] : {std::pair{a1.get(), k.p.get()}, std::pair{a2.get(), k.q.get()}}) {
    if (BN_priv_rand_range_ex(base, prime, 0, ctx.get()) != 1) return fail();
    if (BN_cmp(base, BN_value_one()) <= 0 && !BN_set_word(base, 2)) return fail();
  }
  if (BN_mod_exp_mont_consttime_x2(r.get(), a1.get(), p1.get(), k.p.get(), nullptr, r2.get(),
                                   a2.get(), q1.get(), k.q.get(), nullptr, ctx.get()) != 1) {
    return fail();
  }
  if (!BN_is_one(r.get())) return Bad("prime1 is not prime");
  if (!BN_is_one(r2.get())) return Bad("prime2 is not prime");
  return absl::OkStatus();
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> BuildRsaKey(const BlobNumbers& k) {
  auto fail = [] { return absl::InternalError("PRIVATEKEYBLOB: could not build the RSA key"); };
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, k.n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, k.e.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_D, k.d.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR1, k.p.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR2, k.q.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT1, k.dp.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT2, k.dq.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_COEFFICIENT1, k.qinv.get())) {
    return fail();
  }
  CleansingParams params(OSSL_PARAM_BLD_to_param(bld.get()));
  if (!params) return fail();
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1) {
    return fail();
  }
  return ossl::UniquePtr<EVP_PKEY>(raw);
}

// Reads a private RSA number of a key; null when the key does not have it
// (or does not reveal it, as with token keys).
ossl::UniquePtr<BIGNUM> GetBn(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) return nullptr;
  return ossl::UniquePtr<BIGNUM>(bn);
}

// The numbers of an RSA key (null where the key has none).
BlobNumbers RsaNumbersOf(EVP_PKEY* key) {
  BlobNumbers k;
  k.n = GetBn(key, OSSL_PKEY_PARAM_RSA_N);
  k.e = GetBn(key, OSSL_PKEY_PARAM_RSA_E);
  k.d = GetBn(key, OSSL_PKEY_PARAM_RSA_D);
  k.p = GetBn(key, OSSL_PKEY_PARAM_RSA_FACTOR1);
  k.q = GetBn(key, OSSL_PKEY_PARAM_RSA_FACTOR2);
  k.dp = GetBn(key, OSSL_PKEY_PARAM_RSA_EXPONENT1);
  k.dq = GetBn(key, OSSL_PKEY_PARAM_RSA_EXPONENT2);
  k.qinv = GetBn(key, OSSL_PKEY_PARAM_RSA_COEFFICIENT1);
  return k;
}

// DER length octets of `len`.
size_t DerLengthSize(size_t len) {
  size_t n = 1;
  if (len >= 0x80) {
    for (size_t v = len; v != 0; v >>= 8) ++n;
  }
  return n;
}
size_t DerSize(size_t content) {
  return 1 + DerLengthSize(content) + content;
}
uint8_t* PutDerHeader(uint8_t* out, uint8_t tag, size_t len) {
  *out++ = tag;
  if (len < 0x80) {
    *out++ = static_cast<uint8_t>(len);
    return out;
  }
  const size_t octets = DerLengthSize(len) - 1;
  *out++ = static_cast<uint8_t>(0x80 | octets);
  for (size_t i = octets; i-- > 0;) *out++ = static_cast<uint8_t>(len >> (8 * i));
  return out;
}
// Content octets of a non-negative INTEGER: its big-endian magnitude, with
// a leading 0x00 when the top bit is set; zero is one 0x00 octet.
size_t DerIntegerContentSize(const BIGNUM* bn) {
  const int bits = BN_num_bits(bn);
  return bits == 0 ? 1 : static_cast<size_t>(bits / 8 + 1);
}

// The DER PKCS#8 PrivateKeyInfo of a two-prime RSA key, written directly
// from its numbers (RFC 5208 and RFC 8017 A.1.2: version 0, rsaEncryption
// with NULL parameters, the RSAPrivateKey in an OCTET STRING): the same
// bytes as OpenSSL's encoder, which costs milliseconds per key in OpenSSL
// 3.0 (tests/pki/private_key_blob_test.cc compares both, and with the
// PKCS#8 file of the Windows vectors). The numbers go straight into the
// wiped buffer; BN_bn2binpad writes each at a length fixed by its size.
absl::StatusOr<hsm::SecretBytes> RsaPkcs8(const BlobNumbers& k) {
  static constexpr uint8_t kAlgorithm[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                           0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
  static constexpr uint8_t kVersion0[] = {0x02, 0x01, 0x00};
  const std::array<const BIGNUM*, 8> numbers = {k.n.get(), k.e.get(),  k.d.get(),  k.p.get(),
                                                k.q.get(), k.dp.get(), k.dq.get(), k.qinv.get()};
  size_t rsa_content = sizeof kVersion0;
  for (const BIGNUM* bn : numbers) {
    if (bn == nullptr || BN_is_negative(bn)) {
      return absl::InvalidArgumentError("PKCS#8: the RSA key's numbers are not all readable");
    }
    rsa_content += DerSize(DerIntegerContentSize(bn));
  }
  const size_t rsa_der = DerSize(rsa_content);
  const size_t info_content = sizeof kVersion0 + sizeof kAlgorithm + DerSize(rsa_der);
  hsm::SecretBytes out(DerSize(info_content));
  uint8_t* w = PutDerHeader(out.data(), 0x30, info_content);
  w = std::copy(std::begin(kVersion0), std::end(kVersion0), w);
  w = std::copy(std::begin(kAlgorithm), std::end(kAlgorithm), w);
  w = PutDerHeader(w, 0x04, rsa_der);
  w = PutDerHeader(w, 0x30, rsa_content);
  w = std::copy(std::begin(kVersion0), std::end(kVersion0), w);
  for (const BIGNUM* bn : numbers) {
    const size_t len = DerIntegerContentSize(bn);
    w = PutDerHeader(w, 0x02, len);
    if (BN_bn2binpad(bn, w, static_cast<int>(len)) != static_cast<int>(len)) {
      return absl::InternalError("PKCS#8: writing an RSA number failed");
    }
    w += len;
  }
  if (w != out.data() + out.size()) return absl::InternalError("PKCS#8: length mismatch");
  return out;
}

}  // namespace

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ParsePrivateKeyBlob(std::span<const uint8_t> blob,
                                                              KeySpec* spec_out) {
  if (blob.size() < kPrivateKeyBlobHeaderSize) {
    return Bad(StrCat(blob.size(), " bytes, shorter than the ", kPrivateKeyBlobHeaderSize,
                      "-byte header"));
  }
  const uint8_t* h = blob.data();
  if (h[0] != kPrivateKeyBlobType) {
    return Bad(StrCat("bType is ", Hex(h[0], 2),
                      h[0] == kPublicKeyBlobType ? " (PUBLICKEYBLOB)" : "",
                      ", expected 0x07 (PRIVATEKEYBLOB)"));
  }
  if (h[1] != kBlobVersion) return Bad(StrCat("bVersion is ", Hex(h[1], 2), ", expected 0x02"));
  if (Le16(h + 2) != 0) return Bad(StrCat("reserved is ", Hex(Le16(h + 2), 4), ", expected 0"));
  const uint32_t alg = Le32(h + 4);
  if (alg != kCalgRsaKeyx && alg != kCalgRsaSign) {
    return Bad(StrCat("aiKeyAlg is ", Hex(alg, 8),
                      ", expected 0x0000a400 (CALG_RSA_KEYX) or 0x00002400 (CALG_RSA_SIGN)"));
  }
  const uint32_t magic = Le32(h + 8);
  if (magic == kMagicRsa1) return Bad("magic is RSA1 (a public key), expected RSA2");
  if (magic != kMagicRsa2) return Bad(StrCat("magic is ", Hex(magic, 8), ", expected RSA2"));
  const uint32_t bitlen = Le32(h + 12);
  if (bitlen % 16 != 0 || bitlen < kMinBits || bitlen > kMaxBits) {
    return Bad(StrCat("bitlen ", bitlen, " is not a multiple of 16 in ", kMinBits, "..", kMaxBits));
  }
  const size_t want = PrivateKeyBlobSize(bitlen);
  if (blob.size() < want) {
    return Bad(StrCat("truncated: ", blob.size(), " bytes, a ", bitlen, "-bit key needs ", want));
  }
  if (blob.size() > want) {
    return Bad(StrCat(blob.size() - want, " trailing bytes after the ", bitlen, "-bit key"));
  }
  const uint32_t pubexp = Le32(h + 16);
  if (pubexp < 3 || pubexp % 2 == 0) {
    return Bad(StrCat("pubexp ", pubexp, " is not an odd number of at least 3"));
  }

  const size_t full = bitlen / 8, half = bitlen / 16;
  size_t at = kPrivateKeyBlobHeaderSize;
  BlobNumbers k;
  k.n = ReadLe(blob, &at, full, false);
  k.p = ReadLe(blob, &at, half, true);
  k.q = ReadLe(blob, &at, half, true);
  k.dp = ReadLe(blob, &at, half, true);
  k.dq = ReadLe(blob, &at, half, true);
  k.qinv = ReadLe(blob, &at, half, true);
  k.d = ReadLe(blob, &at, full, true);
  k.e = NewBn();
  if (!k.n || !k.p || !k.q || !k.dp || !k.dq || !k.qinv || !k.d || !k.e ||
      !BN_set_word(k.e.get(), pubexp)) {
    return absl::InternalError("PRIVATEKEYBLOB: out of memory");
  }
  if (absl::Status s = CheckConsistent(k, bitlen); !s.ok()) return s;

  auto key = BuildRsaKey(k);
  if (!key.ok()) return key.status();
  if (spec_out != nullptr) *spec_out = static_cast<KeySpec>(alg);
  return key;
}

absl::StatusOr<hsm::SecretBytes> SerializePrivateKeyBlob(EVP_PKEY* rsa_private,
                                                         uint32_t ai_key_alg) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(StrCat("PRIVATEKEYBLOB: cannot serialize: ", what));
  };
  if (rsa_private == nullptr) return bad("no key");
  if (EVP_PKEY_is_a(rsa_private, "RSA") != 1) {
    const char* type = EVP_PKEY_get0_type_name(rsa_private);
    return bad(StrCat("the key is ", type != nullptr ? type : "of an unknown type", ", not RSA"));
  }
  if (ai_key_alg != kCalgRsaKeyx && ai_key_alg != kCalgRsaSign) {
    return bad(StrCat("aiKeyAlg ", Hex(ai_key_alg, 8),
                      " is neither CALG_RSA_KEYX (0x0000a400) nor CALG_RSA_SIGN (0x00002400)"));
  }
  // A third prime would have nowhere to go in the blob.
  if (GetBn(rsa_private, OSSL_PKEY_PARAM_RSA_FACTOR3)) return bad("multi-prime RSA key");

  BlobNumbers k = RsaNumbersOf(rsa_private);
  if (!k.n || !k.e) return bad("the key's modulus or public exponent is not readable");
  if (!k.d || !k.p || !k.q || !k.dp || !k.dq || !k.qinv) {
    return bad("the key's private numbers (d, primes, CRT values) are not readable");
  }
  const int bits = BN_num_bits(k.n.get());
  if (bits % 16 != 0 || bits < static_cast<int>(kMinBits) || bits > static_cast<int>(kMaxBits)) {
    return bad(StrCat("a ", bits, "-bit modulus; the format needs a multiple of 16 in ", kMinBits,
                      "..", kMaxBits));
  }
  if (BN_num_bits(k.e.get()) > 32) return bad("the public exponent does not fit in 32 bits");
  const auto bitlen = static_cast<uint32_t>(bits);

  hsm::SecretBytes out(PrivateKeyBlobSize(bitlen));
  uint8_t* h = out.data();
  h[0] = kPrivateKeyBlobType;
  h[1] = kBlobVersion;
  h[2] = h[3] = 0;
  PutLe32(h + 4, ai_key_alg);
  PutLe32(h + 8, kMagicRsa2);
  PutLe32(h + 12, bitlen);
  PutLe32(h + 16, static_cast<uint32_t>(BN_get_word(k.e.get())));

  const int full = bits / 8, half = bits / 16;
  const std::array<std::tuple<const char*, const BIGNUM*, int>, 7> fields = {{
      {"modulus", k.n.get(), full},
      {"prime1", k.p.get(), half},
      {"prime2", k.q.get(), half},
      {"exponent1", k.dp.get(), half},
      {"exponent2", k.dq.get(), half},
      {"coefficient", k.qinv.get(), half},
      {"privateExponent", k.d.get(), full},
  }};
  size_t at = kPrivateKeyBlobHeaderSize;
  for (const auto& [name, bn, len] : fields) {
    // BN_bn2lebinpad refuses a number longer than its field (unbalanced
    // primes, an unreduced CRT value); the blob has fixed-size fields.
    if (BN_bn2lebinpad(bn, out.data() + at, len) != len) {
      return bad(StrCat(name, " does not fit in ", len, " bytes"));
    }
    at += static_cast<size_t>(len);
  }
  return out;
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ParsePrivateKeyPlaintext(std::span<const uint8_t> data,
                                                                   bool* was_blob,
                                                                   uint32_t* ai_key_alg) {
  if (data.empty()) return absl::InvalidArgumentError("archived private key: empty");
  // A blob starts with bType 0x07, DER PKCS#8 with SEQUENCE 0x30: one byte
  // tells them apart.
  if (data[0] == kPrivateKeyBlobType) {
    KeySpec spec;
    auto key = ParsePrivateKeyBlob(data, &spec);
    if (!key.ok()) return key.status();
    if (was_blob != nullptr) *was_blob = true;
    if (ai_key_alg != nullptr) *ai_key_alg = static_cast<uint32_t>(spec);
    return key;
  }
  if (data[0] != 0x30) {
    return absl::InvalidArgumentError(
        StrCat("archived private key: first byte ", Hex(data[0], 2),
               " is neither a PRIVATEKEYBLOB (0x07) nor a DER PKCS#8 PrivateKeyInfo (0x30)"));
  }

  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(StrCat("PKCS#8 private key: ", what));
  };
  const unsigned char* p = data.data();
  std::unique_ptr<PKCS8_PRIV_KEY_INFO, P8Deleter> p8(
      d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, static_cast<long>(data.size())));
  if (!p8) return bad("not a DER PrivateKeyInfo");
  if (p != data.data() + data.size()) {
    return bad(StrCat(data.data() + data.size() - p, " trailing bytes"));
  }
  ossl::UniquePtr<EVP_PKEY> key(EVP_PKCS82PKEY_ex(p8.get(), nullptr, nullptr));
  if (!key) return bad("the key inside could not be decoded");
  if (EVP_PKEY_is_a(key.get(), "RSA") != 1) {
    const char* type = EVP_PKEY_get0_type_name(key.get());
    return bad(StrCat("the key is ", type != nullptr ? type : "of an unknown type",
                      "; only RSA keys can be archived"));
  }
  if (absl::Status st = CheckRsaKeyConsistent(
          key.get(), "PKCS#8 private key: the RSA key's numbers are not consistent");
      !st.ok()) {
    return st;
  }
  if (was_blob != nullptr) *was_blob = false;
  if (ai_key_alg != nullptr) *ai_key_alg = 0;
  return key;
}

absl::StatusOr<hsm::SecretBytes> ToPkcs8(EVP_PKEY* key) {
  if (key == nullptr) return absl::InvalidArgumentError("PKCS#8: no key");
  // A two-prime RSA key whose numbers are all readable (not a token key):
  // written directly. Anything else goes through OpenSSL's encoder.
  if (EVP_PKEY_is_a(key, "RSA") == 1 && !GetBn(key, OSSL_PKEY_PARAM_RSA_FACTOR3)) {
    BlobNumbers k = RsaNumbersOf(key);
    if (k.n && k.e && k.d && k.p && k.q && k.dp && k.dq && k.qinv) return RsaPkcs8(k);
  }
  ERR_clear_error();
  std::unique_ptr<OSSL_ENCODER_CTX, EncoderCtxDeleter> ctx(
      OSSL_ENCODER_CTX_new_for_pkey(key, EVP_PKEY_KEYPAIR, "DER", "PrivateKeyInfo", nullptr));
  if (!ctx || OSSL_ENCODER_CTX_get_num_encoders(ctx.get()) == 0) {
    return absl::FailedPreconditionError(
        "PKCS#8: no encoder for this key's private part (a token key cannot be exported)");
  }
  // A secure-memory BIO wipes its buffer when freed.
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_secmem()));
  if (!bio || OSSL_ENCODER_to_bio(ctx.get(), bio.get()) != 1) {
    return absl::FailedPreconditionError("PKCS#8: encoding the private key failed");
  }
  char* der = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &der);
  if (len <= 0 || der == nullptr) return absl::InternalError("PKCS#8: empty encoding");
  return hsm::SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(der), static_cast<size_t>(len)));
}

absl::Status CheckRsaKeyConsistent(EVP_PKEY* key, std::string_view what) {
  auto bad = [what](std::string_view why) {
    return absl::InvalidArgumentError(StrCat(what, ": ", why));
  };
  if (key == nullptr || EVP_PKEY_is_a(key, "RSA") != 1) return bad("not an RSA key");
  // The same consistency checks as a blob's numbers get (n = p*q, e*d = 1
  // mod lcm(p-1, q-1), the CRT values, a Fermat test of each prime), not
  // OpenSSL's EVP_PKEY_pairwise_check: that one runs a full Miller-Rabin
  // test of both primes (about 50 ms for RSA-2048 against 1.5 ms for these
  // checks, tests/bench/archival_bench), and the archival key check (a real
  // encrypt/decrypt, CheckKeyPairMatches) stands behind this as for blobs.
  // Multi-prime keys, which a blob cannot hold, still get OpenSSL's check.
  if (GetBn(key, OSSL_PKEY_PARAM_RSA_FACTOR3)) {
    ossl::UniquePtr<EVP_PKEY_CTX> check(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
    if (!check || EVP_PKEY_pairwise_check(check.get()) != 1) {
      ERR_clear_error();
      return bad("OpenSSL's key-pair check of the multi-prime key fails");
    }
    return absl::OkStatus();
  }
  BlobNumbers k = RsaNumbersOf(key);
  if (!k.n || !k.e || !k.d || !k.p || !k.q || !k.dp || !k.dq || !k.qinv) {
    ERR_clear_error();
    return bad("its private numbers (d, primes, CRT values) are not all present");
  }
  for (BIGNUM* secret : {k.d.get(), k.p.get(), k.q.get(), k.dp.get(), k.dq.get(), k.qinv.get()}) {
    BN_set_flags(secret, BN_FLG_CONSTTIME);
  }
  return CheckConsistent(k, static_cast<uint32_t>(BN_num_bits(k.n.get())), what);
}

namespace {

// The key verification's encrypt/decrypt, done with the numbers: a random
// m in [2, n-2] is encrypted with the request's public key (c = m^e mod n)
// and decrypted with the private key's CRT numbers, as an RSA private-key
// operation does (m1 = c^dp mod p, m2 = c^dq mod q, m = m2 + q * (qinv *
// (m1 - m2) mod p)); the result must be m. OpenSSL's EVP decrypt computes
// the same CRT result, but first sets up blinding (a 2048-bit modular
// inversion, for a key used once on a random value nobody else knows, which
// is what blinding would make of the input) and pads with OAEP (which only
// makes a 32-byte payload into such a random number). The exponentiations
// with secret exponents are OpenSSL's constant-time ones.
absl::Status CrtRoundTrip(const BlobNumbers& k, const BIGNUM* n, const BIGNUM* e) {
  auto fail = [] { return absl::InternalError("key verification: OpenSSL arithmetic failed"); };
  auto mismatch = [] {
    return absl::InvalidArgumentError(
        "key verification: the private key does not decrypt what the public key encrypted");
  };
  if (BN_num_bits(n) < 16) return mismatch();
  ossl::UniquePtr<BN_CTX> ctx(BN_CTX_secure_new());
  ossl::UniquePtr<BIGNUM> m = NewBn(), range = NewBn(), c = NewBn(), cp = NewBn(), cq = NewBn(),
                          m1 = NewBn(), m2 = NewBn(), h = NewBn(), back = NewBn();
  if (!ctx || !m || !range || !c || !cp || !cq || !m1 || !m2 || !h || !back) return fail();
  // m uniformly in [2, n-2].
  if (!BN_sub(range.get(), n, BN_value_one()) || !BN_sub_word(range.get(), 2) ||
      BN_priv_rand_range_ex(m.get(), range.get(), 0, ctx.get()) != 1 || !BN_add_word(m.get(), 2)) {
    return fail();
  }
  if (!BN_mod_exp(c.get(), m.get(), e, n, ctx.get())) return fail();
  // The primes must be in range for the reductions below to mean anything.
  if (BN_is_negative(k.p.get()) || BN_is_negative(k.q.get()) || BN_is_zero(k.p.get()) ||
      BN_is_zero(k.q.get()) || BN_is_one(k.p.get()) || BN_is_one(k.q.get()) ||
      BN_is_negative(k.dp.get()) || BN_is_negative(k.dq.get())) {
    return mismatch();
  }
  // Montgomery needs odd moduli; an even "prime" is no key.
  if (!BN_is_odd(k.p.get()) || !BN_is_odd(k.q.get())) return mismatch();
  // Both halves in one dual exponentiation, as OpenSSL's RSA does.
  if (!BN_mod(cp.get(), c.get(), k.p.get(), ctx.get()) ||
      !BN_mod(cq.get(), c.get(), k.q.get(), ctx.get()) ||
      BN_mod_exp_mont_consttime_x2(m1.get(), cp.get(), k.dp.get(), k.p.get(), nullptr, m2.get(),
                                   cq.get(), k.dq.get(), k.q.get(), nullptr, ctx.get()) != 1) {
    return fail();
  }
  if (!BN_mod_sub(h.get(), m1.get(), m2.get(), k.p.get(), ctx.get()) ||
      !BN_mod_mul(h.get(), h.get(), k.qinv.get(), k.p.get(), ctx.get()) ||
      !BN_mul(back.get(), h.get(), k.q.get(), ctx.get()) ||
      !BN_add(back.get(), back.get(), m2.get())) {
    return fail();
  }
  if (BN_cmp(back.get(), m.get()) != 0) return mismatch();
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckKeyPairMatches(EVP_PKEY* private_key, EVP_PKEY* public_key) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(StrCat("key verification: ", what));
  };
  if (private_key == nullptr || public_key == nullptr) return bad("missing key");
  if (EVP_PKEY_is_a(private_key, "RSA") != 1) return bad("the private key is not RSA");
  if (EVP_PKEY_is_a(public_key, "RSA") != 1) return bad("the public key is not RSA");
  if (EVP_PKEY_eq(private_key, public_key) != 1) {
    return bad("the private key does not belong to the public key (modulus or exponent differ)");
  }

  // Equal public numbers do not prove the private half works: a real
  // encrypt/decrypt does. A two-prime key whose numbers are readable is
  // checked with RSA itself on a random number (CrtRoundTrip); any other
  // key through OpenSSL's OAEP encrypt/decrypt below.
  if (!GetBn(private_key, OSSL_PKEY_PARAM_RSA_FACTOR3)) {
    BlobNumbers k = RsaNumbersOf(private_key);
    ossl::UniquePtr<BIGNUM> n = GetBn(public_key, OSSL_PKEY_PARAM_RSA_N);
    ossl::UniquePtr<BIGNUM> e = GetBn(public_key, OSSL_PKEY_PARAM_RSA_E);
    if (k.p && k.q && k.dp && k.dq && k.qinv && n && e) {
      for (BIGNUM* secret : {k.p.get(), k.q.get(), k.dp.get(), k.dq.get(), k.qinv.get()}) {
        BN_set_flags(secret, BN_FLG_CONSTTIME);
      }
      return CrtRoundTrip(k, n.get(), e.get());
    }
  }
  ERR_clear_error();
  // OAEP-SHA256 needs 32 + 2*32 + 2 bytes of modulus, so keys under 784
  // bits (the format allows 512) use PKCS#1 v1.5.
  constexpr size_t kProbe = 32;
  const int pad = EVP_PKEY_get_size(public_key) >= static_cast<int>(kProbe + 2 * 32 + 2)
                      ? RSA_PKCS1_OAEP_PADDING
                      : RSA_PKCS1_PADDING;
  auto set_padding = [pad](EVP_PKEY_CTX* ctx) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, pad) != 1) return false;
    return pad != RSA_PKCS1_OAEP_PADDING ||
           EVP_PKEY_CTX_set_rsa_oaep_md_name(ctx, "SHA256", nullptr) == 1;
  };

  hsm::SecretBytes probe(kProbe);
  if (RAND_bytes(probe.data(), static_cast<int>(probe.size())) != 1) {
    return absl::InternalError("key verification: no random bytes");
  }
  ossl::UniquePtr<EVP_PKEY_CTX> enc(EVP_PKEY_CTX_new_from_pkey(nullptr, public_key, nullptr));
  size_t ct_len = 0;
  if (!enc || EVP_PKEY_encrypt_init(enc.get()) != 1 || !set_padding(enc.get()) ||
      EVP_PKEY_encrypt(enc.get(), nullptr, &ct_len, probe.data(), probe.size()) != 1) {
    return bad("encrypting with the public key failed");
  }
  std::vector<uint8_t> ct(ct_len);
  if (EVP_PKEY_encrypt(enc.get(), ct.data(), &ct_len, probe.data(), probe.size()) != 1) {
    return bad("encrypting with the public key failed");
  }
  ct.resize(ct_len);

  ossl::UniquePtr<EVP_PKEY_CTX> dec(EVP_PKEY_CTX_new_from_pkey(nullptr, private_key, nullptr));
  size_t pt_len = 0;
  if (!dec || EVP_PKEY_decrypt_init(dec.get()) != 1 || !set_padding(dec.get()) ||
      EVP_PKEY_decrypt(dec.get(), nullptr, &pt_len, ct.data(), ct.size()) != 1) {
    return bad("decrypting with the private key failed");
  }
  hsm::SecretBytes plain(pt_len);
  if (EVP_PKEY_decrypt(dec.get(), plain.data(), &pt_len, ct.data(), ct.size()) != 1) {
    return bad("the private key does not decrypt what the public key encrypted");
  }
  if (pt_len != probe.size() || CRYPTO_memcmp(plain.data(), probe.data(), probe.size()) != 0) {
    return bad("the private key does not decrypt what the public key encrypted");
  }
  return absl::OkStatus();
}

}  // namespace keywarden::pki
