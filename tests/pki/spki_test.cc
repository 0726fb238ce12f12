// pki::ReadPublicKey and the PKCS#10 parse built on it, checked against
// OpenSSL's own decoders and encoders (i2d_PUBKEY, d2i_X509_REQ,
// X509_REQ_verify) as the independent reference.
#include "pki/spki.h"

#include <openssl/core_names.h>
#include <openssl/x509.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "pki/pkcs10.h"

namespace keywarden::testing {
namespace {

using Bytes = std::vector<uint8_t>;

// `value` in DER by OpenSSL's i2d function for its type; empty if it does
// not encode.
template <typename T>
Bytes DerOf(int (*i2d)(const T*, unsigned char**), const T* value) {
  unsigned char* der = nullptr;
  const int len = i2d(value, &der);
  Bytes out;
  if (len > 0) out.assign(der, der + len);
  OPENSSL_free(der);
  return out;
}

Bytes SpkiOf(EVP_PKEY* key) {
  return DerOf(i2d_PUBKEY, key);
}

// The SubjectPublicKeyInfo OpenSSL writes for `key` with `param` = `value`.
Bytes SpkiWith(EVP_PKEY* key, const char* param, const char* value) {
  ossl::UniquePtr<EVP_PKEY> copy(EVP_PKEY_dup(key));
  if (!copy || EVP_PKEY_set_utf8_string_param(copy.get(), param, value) != 1) return {};
  return SpkiOf(copy.get());
}

ossl::UniquePtr<EVP_PKEY> Rsa(unsigned bits, unsigned exponent) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  ossl::UniquePtr<BIGNUM> e(BN_new());
  EVP_PKEY* key = nullptr;
  if (!ctx || !e || BN_set_word(e.get(), exponent) != 1 || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), static_cast<int>(bits)) != 1 ||
      EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx.get(), e.get()) != 1 ||
      EVP_PKEY_keygen(ctx.get(), &key) != 1) {
    return {};
  }
  return ossl::UniquePtr<EVP_PKEY>(key);
}

void ExpectReadsAsItself(EVP_PKEY* key) {
  const Bytes spki = SpkiOf(key);
  ASSERT_FALSE(spki.empty());
  auto read = pki::ReadPublicKey(spki);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(EVP_PKEY_eq(read->get(), key), 1);
  EXPECT_EQ(SpkiOf(read->get()), spki);
  EXPECT_EQ(EVP_PKEY_get_bits(read->get()), EVP_PKEY_get_bits(key));
}

void ExpectRefused(const Bytes& spki, const std::string& why) {
  auto read = pki::ReadPublicKey(spki);
  ASSERT_FALSE(read.ok()) << "accepted";
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(read.status().message().find(why), std::string::npos) << read.status();
}

TEST(ReadPublicKeyTest, RsaKeysReadAsOpenSslWritesThem) {
  for (const auto& [bits, exponent] : std::vector<std::pair<unsigned, unsigned>>{
           {1024, 3}, {2048, 65537}, {3072, 65537}, {2056, 17}, {4096, 65537}}) {
    SCOPED_TRACE(::testing::Message() << bits << " bits, e = " << exponent);
    auto key = Rsa(bits, exponent);
    ASSERT_TRUE(key);
    ExpectReadsAsItself(key.get());
  }
}

TEST(ReadPublicKeyTest, EcKeysOnEveryNamedCurveReadAsOpenSslWritesThem) {
  for (const char* curve : {"P-256", "P-384", "P-521", "secp256k1", "brainpoolP256r1"}) {
    SCOPED_TRACE(curve);
    ossl::UniquePtr<EVP_PKEY> key(EVP_EC_gen(curve));
    ASSERT_TRUE(key);
    ExpectReadsAsItself(key.get());
  }
}

// A curve's parameters are kept after its first key: every later key on it,
// read from any thread, is still its own point.
TEST(ReadPublicKeyTest, KeysOnTheSameCurveFromManyThreadsEachReadAsThemselves) {
  std::vector<ossl::UniquePtr<EVP_PKEY>> keys;
  for (int i = 0; i < 4; ++i) {
    for (const char* curve : {"P-256", "P-384", "secp256k1"}) {
      keys.emplace_back(EVP_EC_gen(curve));
      ASSERT_TRUE(keys.back());
    }
  }
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&keys, &wrong, t] {
      for (int round = 0; round < 50; ++round) {
        const auto& key =
            keys[(static_cast<size_t>(t) * 5 + static_cast<size_t>(round)) % keys.size()];
        auto read = pki::ReadPublicKey(SpkiOf(key.get()));
        if (!read.ok() || EVP_PKEY_eq(read->get(), key.get()) != 1) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  for (const auto& key : keys) ExpectReadsAsItself(key.get());
}

TEST(ReadPublicKeyTest, OtherKeyTypesGoThroughOpenSsl) {
  ossl::UniquePtr<EVP_PKEY> ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_TRUE(ed);
  ExpectReadsAsItself(ed.get());
  // id-ecPublicKey on the SM2 curve: OpenSSL makes an SM2 key of it, not an
  // "ec" key a template's key_types would take.
  ossl::UniquePtr<EVP_PKEY> sm2(EVP_PKEY_Q_keygen(nullptr, nullptr, "SM2"));
  ASSERT_TRUE(sm2);
  ExpectReadsAsItself(sm2.get());
  auto read = pki::ReadPublicKey(SpkiOf(sm2.get()));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(EVP_PKEY_is_a(read->get(), "SM2"));
  EXPECT_FALSE(EVP_PKEY_is_a(read->get(), "EC"));
}

// Every other encoding of a key OpenSSL reads as the same key is refused.
TEST(ReadPublicKeyTest, SecondEncodingsOfAnEcKeyAreRefused) {
  ossl::UniquePtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  ASSERT_TRUE(key);
  const Bytes plain = SpkiOf(key.get());
  for (const auto& [param, value, why] :
       std::vector<std::tuple<const char*, const char*, const char*>>{
           {OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "compressed",
            "not an uncompressed EC point"},
           {OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "hybrid", "not an uncompressed EC point"},
           {OSSL_PKEY_PARAM_EC_ENCODING, "explicit", "does not name its curve"}}) {
    SCOPED_TRACE(value);
    const Bytes other = SpkiWith(key.get(), param, value);
    ASSERT_FALSE(other.empty());
    ASSERT_NE(other, plain);
    // OpenSSL reads it as the same key and writes it back as it came.
    const unsigned char* p = other.data();
    ossl::UniquePtr<EVP_PKEY> decoded(d2i_PUBKEY(nullptr, &p, static_cast<long>(other.size())));
    ASSERT_TRUE(decoded);
    EXPECT_EQ(EVP_PKEY_eq(decoded.get(), key.get()), 1);
    EXPECT_EQ(SpkiOf(decoded.get()), other);
    ExpectRefused(other, why);
  }
}

TEST(ReadPublicKeyTest, RsaKeysNotInDerAreRefused) {
  auto key = Rsa(2048, 65537);
  ASSERT_TRUE(key);
  const Bytes der = SpkiOf(key.get());
  // 30 82 01 22 | 30 0d 06 09 <rsaEncryption> 05 00 | 03 82 01 0f 00 | 30 82 01 0a
  //   02 82 01 01 <modulus> 02 03 01 00 01
  ASSERT_EQ(der.size(), 294u);
  ASSERT_EQ(Bytes(der.end() - 5, der.end()), (Bytes{0x02, 0x03, 0x01, 0x00, 0x01}));
  {  // The exponent's length in long form: BER, read by OpenSSL as the same key.
    Bytes ber(der.begin(), der.end() - 5);
    for (uint8_t b : {0x02, 0x81, 0x03, 0x01, 0x00, 0x01}) ber.push_back(b);
    ber[3] += 1;   // outer SEQUENCE
    ber[22] += 1;  // BIT STRING
    ber[27] += 1;  // RSAPublicKey
    const unsigned char* p = ber.data();
    ossl::UniquePtr<EVP_PKEY> decoded(d2i_PUBKEY(nullptr, &p, static_cast<long>(ber.size())));
    ASSERT_TRUE(decoded) << "the BER variant is not what the test means";
    EXPECT_EQ(EVP_PKEY_eq(decoded.get(), key.get()), 1);
    ExpectRefused(ber, "is not in DER");
  }
  {  // The modulus with a second leading zero octet.
    Bytes padded(der.begin(), der.begin() + 28);
    for (uint8_t b : {0x02, 0x82, 0x01, 0x02, 0x00}) padded.push_back(b);
    padded.insert(padded.end(), der.begin() + 32, der.end());
    padded[3] += 1;
    padded[22] += 1;
    padded[27] += 1;
    ExpectRefused(padded, "is not in DER");
  }
  {  // The algorithm's NULL parameters left out.
    Bytes no_null = {0x30, 0x82, 0x01, 0x20, 0x30, 0x0b};
    no_null.insert(no_null.end(), der.begin() + 6, der.begin() + 17);
    no_null.insert(no_null.end(), der.begin() + 19, der.end());
    ExpectRefused(no_null, "is not in DER");
  }
  {  // A negative modulus (its leading zero octet dropped).
    Bytes negative(der.begin(), der.begin() + 28);
    for (uint8_t b : {0x02, 0x82, 0x01, 0x00}) negative.push_back(b);
    negative.insert(negative.end(), der.begin() + 33, der.end());
    negative[3] -= 1;
    negative[22] -= 1;
    negative[27] -= 1;
    ASSERT_GE(negative[32], 0x80);
    ExpectRefused(negative, "must be positive");
  }
}

// Keys no RSA key pair has, or that anyone can sign for (exponent 1).
TEST(ReadPublicKeyTest, RsaKeysNoHolderCouldHaveAreRefused) {
  auto key = Rsa(2048, 65537);
  ASSERT_TRUE(key);
  const Bytes der = SpkiOf(key.get());
  ASSERT_EQ(der.size(), 294u);  // ... <modulus: 288 ends it> 02 03 01 00 01
  Bytes even_exponent = der;
  even_exponent.back() = 0x00;  // 65536
  ExpectRefused(even_exponent, "exponent odd and at least 3");
  Bytes even_modulus = der;
  ASSERT_EQ(even_modulus[288] & 1, 1);
  even_modulus[288] ^= 1;
  ExpectRefused(even_modulus, "modulus must be odd");
  // Exponent 1: 02 01 01, two bytes shorter.
  Bytes exponent_one(der.begin(), der.end() - 5);
  for (uint8_t b : {0x02, 0x01, 0x01}) exponent_one.push_back(b);
  exponent_one[3] -= 2;
  exponent_one[22] -= 2;
  exponent_one[27] -= 2;
  ExpectRefused(exponent_one, "exponent odd and at least 3");
  ExpectReadsAsItself(key.get());
}

TEST(ReadPublicKeyTest, BadBytesAreRefusedWithAReason) {
  ossl::UniquePtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  ASSERT_TRUE(key);
  const Bytes der = SpkiOf(key.get());
  ExpectRefused({}, "not a SubjectPublicKeyInfo");
  Bytes trailing = der;
  trailing.push_back(0);
  ExpectRefused(trailing, "not a SubjectPublicKeyInfo");
  Bytes off_curve = der;
  off_curve.back() ^= 1;  // Y no longer matches X
  ExpectRefused(off_curve, "not a point on its named curve");
  // 30 59 | 30 13 06 07 <id-ecPublicKey> 06 08 <prime256v1> | 03 42 00 04 X Y
  ASSERT_EQ(der.size(), 91u);
  ASSERT_EQ(der[24], 0x42);
  Bytes short_point(der.begin(), der.end() - 1);
  short_point[1] -= 1;
  short_point[24] -= 1;  // BIT STRING length
  ExpectRefused(short_point, "not a point on its named curve");
  Bytes unknown_curve = der;
  unknown_curve[22] ^= 0x7f;  // the last arc of prime256v1
  ExpectRefused(unknown_curve, "names a curve OpenSSL does not know");
  // An object OpenSSL knows that is no curve: ecdsa-with-SHA256, the same
  // length as prime256v1 (2A 86 48 CE 3D 04 03 02 for ... 3D 03 01 07).
  Bytes not_a_curve = der;
  not_a_curve[20] = 0x04;
  not_a_curve[21] = 0x03;
  not_a_curve[22] = 0x02;
  ExpectRefused(not_a_curve, "names a curve OpenSSL cannot use");
  ExpectRefused(not_a_curve, "names a curve OpenSSL cannot use");  // and again, remembered
  ExpectReadsAsItself(key.get());
}

// ParsePkcs10 reads a request part by part; OpenSSL's d2i_X509_REQ and
// X509_REQ_verify are the reference for what it must find.
ossl::UniquePtr<X509_REQ> OpenSslRequest(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  return ossl::UniquePtr<X509_REQ>(d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
}

std::vector<uint8_t> Der(X509_REQ* req) {
  return DerOf(i2d_X509_REQ, req);
}

// A request for `key` with a subject, an extension request (SAN, key
// usage) and a challengePassword attribute, signed with `md` (PSS padding
// when `pss`).
std::vector<uint8_t> FullRequest(EVP_PKEY* key, const EVP_MD* md, bool pss) {
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  X509_REQ_set_version(req.get(), X509_REQ_VERSION_1);
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("keywarden test"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Zoë"), -1, -1, 0);
  X509_REQ_set_pubkey(req.get(), key);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  sk_X509_EXTENSION_push(
      exts, X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, "email:zoe@example.com"));
  sk_X509_EXTENSION_push(exts,
                         X509V3_EXT_conf_nid(nullptr, nullptr, NID_key_usage, "digitalSignature"));
  X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  X509_REQ_add1_attr_by_NID(req.get(), NID_pkcs9_challengePassword, MBSTRING_ASC,
                            reinterpret_cast<const unsigned char*>("not a secret"), -1);
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit(ctx.get(), &pctx, md, nullptr, key) != 1) return {};
  if (pss && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1) return {};
  if (X509_REQ_sign_ctx(req.get(), ctx.get()) <= 0) return {};
  return Der(req.get());
}

void ExpectSameAsOpenSsl(const std::vector<uint8_t>& der) {
  auto reference = OpenSslRequest(der);
  ASSERT_TRUE(reference);
  ASSERT_EQ(X509_REQ_verify(reference.get(), X509_REQ_get0_pubkey(reference.get())), 1);
  auto parsed = pki::ParsePkcs10(der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(EVP_PKEY_eq(parsed->public_key(), X509_REQ_get0_pubkey(reference.get())), 1);
  EXPECT_EQ(DerOf(i2d_X509_NAME, X509_REQ_get_subject_name(parsed->req.get())),
            DerOf(i2d_X509_NAME, X509_REQ_get_subject_name(reference.get())));
  ASSERT_EQ(X509_REQ_get_attr_count(parsed->req.get()), X509_REQ_get_attr_count(reference.get()));
  for (int i = 0; i < X509_REQ_get_attr_count(reference.get()); ++i) {
    EXPECT_EQ(DerOf(i2d_X509_ATTRIBUTE, X509_REQ_get_attr(parsed->req.get(), i)),
              DerOf(i2d_X509_ATTRIBUTE, X509_REQ_get_attr(reference.get(), i)));
  }
  // The key's algorithm and bits as sent are kept for the certificate.
  const unsigned char* bits_a = nullptr;
  const unsigned char* bits_b = nullptr;
  int len_a = 0, len_b = 0;
  X509_ALGOR* alg_a = nullptr;
  X509_ALGOR* alg_b = nullptr;
  ASSERT_EQ(X509_PUBKEY_get0_param(nullptr, &bits_a, &len_a, &alg_a,
                                   X509_REQ_get_X509_PUBKEY(parsed->req.get())),
            1);
  ASSERT_EQ(X509_PUBKEY_get0_param(nullptr, &bits_b, &len_b, &alg_b,
                                   X509_REQ_get_X509_PUBKEY(reference.get())),
            1);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bits_a), static_cast<size_t>(len_a)),
            std::string(reinterpret_cast<const char*>(bits_b), static_cast<size_t>(len_b)));
  EXPECT_EQ(X509_ALGOR_cmp(alg_a, alg_b), 0);
  const ASN1_BIT_STRING* sig_a = nullptr;
  const ASN1_BIT_STRING* sig_b = nullptr;
  const X509_ALGOR* sig_alg_a = nullptr;
  const X509_ALGOR* sig_alg_b = nullptr;
  X509_REQ_get0_signature(parsed->req.get(), &sig_a, &sig_alg_a);
  X509_REQ_get0_signature(reference.get(), &sig_b, &sig_alg_b);
  ASSERT_TRUE(sig_a != nullptr && sig_alg_a != nullptr);
  EXPECT_EQ(ASN1_STRING_cmp(sig_a, sig_b), 0);
  EXPECT_EQ(X509_ALGOR_cmp(sig_alg_a, sig_alg_b), 0);
  EXPECT_EQ(X509_REQ_get_signature_nid(parsed->req.get()),
            X509_REQ_get_signature_nid(reference.get()));
  EXPECT_EQ(parsed->spki_sha256(), pki::SpkiSha256(X509_REQ_get0_pubkey(reference.get())));
  STACK_OF(X509_EXTENSION)* ext_a = X509_REQ_get_extensions(parsed->req.get());
  STACK_OF(X509_EXTENSION)* ext_b = X509_REQ_get_extensions(reference.get());
  ASSERT_EQ(sk_X509_EXTENSION_num(ext_a), sk_X509_EXTENSION_num(ext_b));
  for (int i = 0; i < sk_X509_EXTENSION_num(ext_b); ++i) {
    EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_EXTENSION_get_data(sk_X509_EXTENSION_value(ext_a, i)),
                                    X509_EXTENSION_get_data(sk_X509_EXTENSION_value(ext_b, i))),
              0);
  }
  sk_X509_EXTENSION_pop_free(ext_a, X509_EXTENSION_free);
  sk_X509_EXTENSION_pop_free(ext_b, X509_EXTENSION_free);
}

TEST(ParsePkcs10Test, FindsWhatOpenSslFindsForEachKeyAndSignature) {
  auto rsa = Rsa(2048, 65537);
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-384"));
  ossl::UniquePtr<EVP_PKEY> ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_TRUE(rsa && ec && ed);
  struct Case {
    const char* name;
    EVP_PKEY* key;
    const EVP_MD* md;
    bool pss;
  };
  for (const Case& c : {Case{"RSA SHA-256", rsa.get(), EVP_sha256(), false},
                        Case{"RSA SHA-1", rsa.get(), EVP_sha1(), false},
                        Case{"RSA-PSS SHA-256", rsa.get(), EVP_sha256(), true},
                        Case{"ECDSA SHA-384", ec.get(), EVP_sha384(), false},
                        Case{"Ed25519", ed.get(), nullptr, false}}) {
    SCOPED_TRACE(c.name);
    const auto der = FullRequest(c.key, c.md, c.pss);
    ASSERT_FALSE(der.empty());
    ExpectSameAsOpenSsl(der);
  }
}

TEST(ParsePkcs10Test, ARequestWithoutAttributesParses) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), ec.get());
  ASSERT_GT(X509_REQ_sign(req.get(), ec.get(), EVP_sha256()), 0);
  auto der = Der(req.get());
  // OpenSSL writes an empty [0] SET.
  ExpectSameAsOpenSsl(der);
}

TEST(ParsePkcs10Test, ASignatureOverOtherBytesIsRefused) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  auto der = FullRequest(ec.get(), EVP_sha256(), false);
  ASSERT_FALSE(der.empty());
  // Change one letter of "keywarden test" in the signed subject.
  const std::string text(der.begin(), der.end());
  const size_t at = text.find("keywarden test");
  ASSERT_NE(at, std::string::npos);
  der[at] = 'K';
  auto reference = OpenSslRequest(der);
  ASSERT_TRUE(reference);
  EXPECT_NE(X509_REQ_verify(reference.get(), X509_REQ_get0_pubkey(reference.get())), 1);
  auto parsed = pki::ParsePkcs10(der);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(pki::RequestCheckOf(parsed.status()), pki::RequestCheck::kSignature);
}

TEST(ParsePkcs10Test, MalformedRequestsAreRefusedWithAReason) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  const auto der = FullRequest(ec.get(), EVP_sha256(), false);
  ASSERT_FALSE(der.empty());
  auto refused = [](std::vector<uint8_t> bytes, const std::string& why) {
    auto parsed = pki::ParsePkcs10(bytes);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(why), std::string::npos) << parsed.status();
  };
  auto trailing = der;
  trailing.push_back(0);
  refused(trailing, "trailing bytes");
  refused(std::vector<uint8_t>(der.begin(), der.end() - 1), "not a certification request");
  // version 1 instead of 0: 30 82 LL LL 30 8x .. 02 01 00
  const std::vector<uint8_t> v1 = {0x02, 0x01, 0x00};
  const auto at = std::search(der.begin(), der.end(), v1.begin(), v1.end());
  ASSERT_LT(at - der.begin(), 10);
  auto v2 = der;
  v2[static_cast<size_t>(at - der.begin()) + 2] = 1;
  refused(v2, "version");
}

}  // namespace
}  // namespace keywarden::testing
