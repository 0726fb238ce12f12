#include "pki/spki.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>

#include "pki/der.h"

namespace keywarden::pki {
namespace {

constexpr char kRsaEncryption[] = "1.2.840.113549.1.1.1";
constexpr char kEcPublicKey[] = "1.2.840.10045.2.1";

absl::Status Problem(const char* what) {
  return absl::InvalidArgumentError(what);
}

// `why`, or "is not in DER" when OpenSSL reads `spki` as a key all the same
// (BER lengths the strict DER reader refuses, say).
absl::Status NotDerOr(std::span<const uint8_t> spki, const char* why) {
  const unsigned char* p = spki.data();
  ossl::UniquePtr<EVP_PKEY> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  ERR_clear_error();
  return Problem(key && p == spki.data() + spki.size() ? "is not in DER" : why);
}

bool Equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// The magnitude of a positive INTEGER's contents (no leading zero octets);
// empty when it is zero or negative.
std::span<const uint8_t> PositiveMagnitude(std::span<const uint8_t> contents) {
  if (contents.empty() || (contents[0] & 0x80) != 0) return {};
  while (!contents.empty() && contents[0] == 0) contents = contents.subspan(1);
  return contents;
}

// DER INTEGER of a positive magnitude: minimal, with one zero octet in front
// when its top bit is set.
der::Bytes PositiveInteger(std::span<const uint8_t> magnitude) {
  der::Bytes value;
  if ((magnitude[0] & 0x80) != 0) value.push_back(0);
  value.insert(value.end(), magnitude.begin(), magnitude.end());
  return der::Tlv(der::kInteger, value);
}

// SubjectPublicKeyInfo { AlgorithmIdentifier `algorithm`, BIT STRING `bits` }.
der::Bytes Spki(const der::Bytes& algorithm, std::span<const uint8_t> bits) {
  return der::Tlv(der::kSequence, der::Concat({der::Tlv(der::kSequence, algorithm),
                                               der::Tlv(der::kBitString, bits)}));
}

// A key of `type` made from `params`: its public key, or with
// EVP_PKEY_KEY_PARAMETERS its parameters only. Null when OpenSSL refuses.
ossl::UniquePtr<EVP_PKEY> FromData(const char* type, const OSSL_PARAM* params,
                                   int selection = EVP_PKEY_PUBLIC_KEY) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, selection, const_cast<OSSL_PARAM*>(params)) != 1) {
    ERR_clear_error();
    return {};
  }
  return ossl::UniquePtr<EVP_PKEY>(key);
}

// RSAPublicKey { modulus INTEGER, publicExponent INTEGER } in the BIT STRING.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadRsa(std::span<const uint8_t> spki,
                                                  std::span<const uint8_t> bits) {
  if (bits.size() < 2 || bits[0] != 0) return NotDerOr(spki, "is not an RSA public key");
  DerReader top(bits.subspan(1));
  DerElement rsa, n, e;
  if (!top.Expect(der::kSequence, &rsa) || !top.empty()) {
    return NotDerOr(spki, "is not an RSA public key");
  }
  DerReader parts(rsa.contents);
  if (!parts.Expect(der::kInteger, &n) || !parts.Expect(der::kInteger, &e) || !parts.empty()) {
    return NotDerOr(spki, "is not an RSA public key");
  }
  const std::span<const uint8_t> modulus = PositiveMagnitude(n.contents);
  const std::span<const uint8_t> exponent = PositiveMagnitude(e.contents);
  if (modulus.empty() || exponent.empty()) {
    return Problem("is not an RSA public key (its modulus and exponent must be positive)");
  }
  // No RSA key pair has an even modulus or exponent, and with an exponent
  // of 1 anyone can "sign" for the key: certifying one would vouch for no
  // holder (CA/Browser Forum BR 6.1.6 asks the same of a CA).
  const bool exponent_one = exponent.size() == 1 && exponent[0] == 1;
  if ((modulus.back() & 1) == 0 || (exponent.back() & 1) == 0 || exponent_one) {
    return Problem(
        "is not an RSA public key keywarden certifies (its modulus must be odd, and its exponent "
        "odd and at least 3)");
  }
  const der::Bytes rsa_der =
      der::Tlv(der::kSequence, der::Concat({PositiveInteger(modulus), PositiveInteger(exponent)}));
  der::Bytes bit_string = {0};
  bit_string.insert(bit_string.end(), rsa_der.begin(), rsa_der.end());
  if (!Equal(spki, Spki(der::Concat({der::Oid(kRsaEncryption), der::kNullValue}), bit_string))) {
    return Problem("is not in DER");
  }
  ossl::UniquePtr<BIGNUM> bn_n(
      BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  ossl::UniquePtr<BIGNUM> bn_e(
      BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    ERR_clear_error();
    return absl::ResourceExhaustedError("out of memory reading an RSA public key");
  }
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  if (!params) return absl::ResourceExhaustedError("out of memory reading an RSA public key");
  auto key = FromData("RSA", params.get());
  if (!key) return Problem("is not a public key OpenSSL reads");
  return key;
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadOther(std::span<const uint8_t> spki);

// A key of `curve` with its parameters only, made once per curve and kept
// (at most one per object name OpenSSL knows). Copying it is what TLS does
// for a peer's share: ~4 us, where building the curve's group for every key
// from its name is ~16 us. Null when OpenSSL cannot use the curve.
const EVP_PKEY* CurveParameters(int nid, const char* curve) {
  static std::mutex mu;
  static auto* kept = new std::map<int, ossl::UniquePtr<EVP_PKEY>>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  auto it = kept->find(nid);
  if (it == kept->end()) {
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(curve), 0),
        OSSL_PARAM_construct_end()};
    // Null (not a curve OpenSSL can use) is remembered too.
    it = kept->emplace(nid, FromData("EC", params, EVP_PKEY_KEY_PARAMETERS)).first;
  }
  return it->second.get();
}

// id-ecPublicKey with a named curve and an uncompressed point.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadEc(std::span<const uint8_t> spki,
                                                 const DerElement& parameters,
                                                 std::span<const uint8_t> bits) {
  if (parameters.tag != der::kOid) {
    return Problem(
        "does not name its curve (explicit or implicit EC parameters; RFC 5480 allows only a "
        "named curve)");
  }
  if (bits.size() < 2 || bits[0] != 0 || bits[1] != 0x04) {
    return Problem("is not an uncompressed EC point (compressed or hybrid form)");
  }
  const std::string curve_oid = OidToText(parameters.contents);
  const int nid = curve_oid.empty() ? NID_undef : OBJ_txt2nid(curve_oid.c_str());
  const char* curve = nid == NID_undef ? nullptr : OBJ_nid2sn(nid);
  ERR_clear_error();
  if (curve == nullptr) return Problem("names a curve OpenSSL does not know");
  // OpenSSL's decoder makes an SM2 key (not an "ec" key type) of this one.
  if (nid == NID_sm2) return ReadOther(spki);
  if (!Equal(spki,
             Spki(der::Concat({der::Oid(kEcPublicKey), der::Oid(curve_oid.c_str())}), bits))) {
    return Problem("is not in DER");
  }
  const std::span<const uint8_t> point = bits.subspan(1);
  const EVP_PKEY* parameters_only = CurveParameters(nid, curve);
  if (parameters_only == nullptr) return Problem("names a curve OpenSSL cannot use");
  // EC_POINT_oct2point under EVP_PKEY_set1_encoded_public_key checks that
  // the point is on the curve, as the decoder does.
  ossl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  if (!key || EVP_PKEY_copy_parameters(key.get(), parameters_only) != 1 ||
      EVP_PKEY_set1_encoded_public_key(key.get(), point.data(), point.size()) != 1) {
    ERR_clear_error();
    return Problem("is not a point on its named curve");
  }
  return key;
}

// Any other key type: OpenSSL's decoder, and its DER of the key.
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadOther(std::span<const uint8_t> spki) {
  const unsigned char* p = spki.data();
  ossl::UniquePtr<EVP_PKEY> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  if (!key || p != spki.data() + spki.size()) {
    ERR_clear_error();
    return Problem("is not a public key OpenSSL reads");
  }
  unsigned char* encoded = nullptr;
  const int encoded_len = i2d_PUBKEY(key.get(), &encoded);
  const bool der = encoded_len > 0 && Equal(spki, {encoded, static_cast<size_t>(encoded_len)});
  OPENSSL_free(encoded);
  ERR_clear_error();
  if (!der) return Problem("is not in DER");
  if (EVP_PKEY_is_a(key.get(), "EC")) {
    // An EC key under another algorithm identifier has a second encoding.
    return Problem("is an EC key not marked id-ecPublicKey");
  }
  return key;
}

}  // namespace

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadPublicKey(std::span<const uint8_t> spki) {
  DerReader top(spki);
  DerElement info, algorithm, oid, bits;
  if (!top.Expect(der::kSequence, &info) || !top.empty()) {
    return NotDerOr(spki, "is not a SubjectPublicKeyInfo");
  }
  DerReader fields(info.contents);
  if (!fields.Expect(der::kSequence, &algorithm) || !fields.Expect(der::kBitString, &bits) ||
      !fields.empty()) {
    return NotDerOr(spki, "is not a SubjectPublicKeyInfo");
  }
  DerReader alg(algorithm.contents);
  if (!alg.Expect(der::kOid, &oid)) return NotDerOr(spki, "is not a SubjectPublicKeyInfo");
  const std::string algorithm_oid = OidToText(oid.contents);
  if (algorithm_oid == kRsaEncryption) return ReadRsa(spki, bits.contents);
  if (algorithm_oid == kEcPublicKey) {
    DerElement parameters;
    if (!alg.Next(&parameters) || !alg.empty()) {
      return Problem(
          "does not name its curve (explicit or implicit EC parameters; RFC 5480 allows only a "
          "named curve)");
    }
    return ReadEc(spki, parameters, bits.contents);
  }
  return ReadOther(spki);
}

bool SetSpkiParts(X509_PUBKEY* to, const X509_ALGOR* algorithm, std::span<const uint8_t> bits) {
  if (to == nullptr || algorithm == nullptr || bits.empty()) return false;
  const ASN1_OBJECT* oid = nullptr;
  int ptype = V_ASN1_UNDEF;
  const void* pval = nullptr;
  X509_ALGOR_get0(&oid, &ptype, &pval, algorithm);
  ossl::UniquePtr<ASN1_OBJECT> oid_copy(OBJ_dup(oid));
  void* pval_copy = nullptr;
  if (ptype == V_ASN1_OBJECT) {
    pval_copy = OBJ_dup(static_cast<const ASN1_OBJECT*>(pval));
  } else if (ptype != V_ASN1_UNDEF && ptype != V_ASN1_NULL) {
    pval_copy = ASN1_STRING_dup(static_cast<const ASN1_STRING*>(pval));  // SEQUENCE etc.
  }
  auto* key_copy = static_cast<unsigned char*>(OPENSSL_memdup(bits.data(), bits.size()));
  const bool copied = oid_copy && key_copy != nullptr &&
                      (pval_copy != nullptr || ptype == V_ASN1_UNDEF || ptype == V_ASN1_NULL);
  if (copied && X509_PUBKEY_set0_param(to, oid_copy.get(), ptype, pval_copy, key_copy,
                                       static_cast<int>(bits.size())) == 1) {
    oid_copy.release();  // owned by `to` now, as are the others
    return true;
  }
  if (ptype == V_ASN1_OBJECT) {
    ASN1_OBJECT_free(static_cast<ASN1_OBJECT*>(pval_copy));
  } else {
    ASN1_STRING_free(static_cast<ASN1_STRING*>(pval_copy));
  }
  OPENSSL_free(key_copy);
  ERR_clear_error();
  return false;
}

}  // namespace keywarden::pki
