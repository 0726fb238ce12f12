#include "pki/pkcs12.h"

#include <algorithm>
#include <functional>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/fast_kdf.h"

namespace keywarden::pki {
namespace {

using hsm::OpenSslError;

struct BagsDeleter {
  void operator()(STACK_OF(PKCS12_SAFEBAG) * s) const {
    sk_PKCS12_SAFEBAG_pop_free(s, PKCS12_SAFEBAG_free);
  }
};
struct SafesDeleter {
  void operator()(STACK_OF(PKCS7) * s) const { sk_PKCS7_pop_free(s, PKCS7_free); }
};
struct P12Deleter {
  void operator()(PKCS12* p) const { PKCS12_free(p); }
};
struct P8Deleter {
  void operator()(PKCS8_PRIV_KEY_INFO* p) const { PKCS8_PRIV_KEY_INFO_free(p); }
};

// The password as a C string, wiped when it goes out of scope.
class CPassword {
 public:
  explicit CPassword(const hsm::SecretString& s) : value_(s.view()) {}
  ~CPassword() { OPENSSL_cleanse(value_.data(), value_.size()); }
  CPassword(const CPassword&) = delete;
  CPassword& operator=(const CPassword&) = delete;
  const char* c_str() const { return value_.c_str(); }

 private:
  std::string value_;
};

}  // namespace

absl::StatusOr<std::vector<uint8_t>> BuildPkcs12(const std::vector<Pkcs12Entry>& entries,
                                                 const hsm::SecretString& password,
                                                 const Pkcs12Options& options) {
  if (entries.empty()) return absl::InvalidArgumentError("PKCS#12: nothing to write");
  if (password.empty()) return absl::InvalidArgumentError("PKCS#12: the password is empty");
  const bool legacy = options.protection == Pkcs12Protection::kLegacy3Des;
  const int iter = options.iterations > 0 ? options.iterations : legacy ? 2048 : 10000;
  const int key_nid = legacy ? NID_pbe_WithSHA1And3_Key_TripleDES_CBC : NID_aes_256_cbc;
  const int cert_nid = key_nid;
  const EVP_MD* mac_md = legacy ? EVP_sha1() : EVP_sha256();
  CPassword pass(password);
  // The three PBKDF2/PKCS#12-KDF derivations of the default protection run
  // in pki/fast_kdf.h's provider (same results, ~2.5 x faster); everything
  // else, and the legacy protection, in OpenSSL's default provider.
  OSSL_LIB_CTX* libctx = legacy ? nullptr : FastKdfContext();
  const char* propq = libctx != nullptr ? kFastKdfProperties : nullptr;

  STACK_OF(PKCS12_SAFEBAG)* cert_raw = nullptr;
  STACK_OF(PKCS12_SAFEBAG)* key_raw = nullptr;
  std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), BagsDeleter> cert_bags, key_bags;
  std::vector<std::vector<uint8_t>> included;
  auto add_cert = [&](X509* cert, const unsigned char* keyid, unsigned int keyid_len,
                      const std::string& name) -> absl::Status {
    std::vector<uint8_t> der = CertificateDer(cert);
    if (std::find(included.begin(), included.end(), der) != included.end()) {
      return absl::OkStatus();
    }
    included.push_back(std::move(der));
    PKCS12_SAFEBAG* bag = PKCS12_add_cert(&cert_raw, cert);
    cert_bags.release();
    cert_bags.reset(cert_raw);
    if (bag == nullptr) return OpenSslError("PKCS#12: certificate bag");
    if (keyid != nullptr && PKCS12_add_localkeyid(bag, const_cast<unsigned char*>(keyid),
                                                  static_cast<int>(keyid_len)) != 1) {
      return OpenSslError("PKCS#12: localKeyID");
    }
    if (!name.empty() && PKCS12_add_friendlyname_utf8(bag, name.c_str(), -1) != 1) {
      return OpenSslError("PKCS#12: friendlyName");
    }
    return absl::OkStatus();
  };

  for (const Pkcs12Entry& e : entries) {
    if (e.key == nullptr || e.certificate == nullptr) {
      return absl::InvalidArgumentError("PKCS#12: an entry has no key or no certificate");
    }
    if (X509_check_private_key(e.certificate, e.key) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(StrCat("PKCS#12: the key does not match certificate \"",
                                               FormatName(X509_get_subject_name(e.certificate)),
                                               "\""));
    }
    unsigned char keyid[EVP_MAX_MD_SIZE];
    unsigned int keyid_len = 0;
    if (!X509_digest(e.certificate, EVP_sha1(), keyid, &keyid_len)) {
      return OpenSslError("PKCS#12: certificate hash");
    }
    // The same key and certificate twice (merging a file with itself): once.
    if (std::find(included.begin(), included.end(), CertificateDer(e.certificate)) !=
        included.end()) {
      continue;
    }
    if (auto st = add_cert(e.certificate, keyid, keyid_len, e.friendly_name); !st.ok()) return st;
    PKCS12_SAFEBAG* kbag =
        PKCS12_add_key_ex(&key_raw, e.key, 0, iter, key_nid, pass.c_str(), libctx, propq);
    key_bags.release();
    key_bags.reset(key_raw);
    if (kbag == nullptr) return OpenSslError("PKCS#12: key bag");
    if (PKCS12_add_localkeyid(kbag, keyid, static_cast<int>(keyid_len)) != 1) {
      return OpenSslError("PKCS#12: localKeyID");
    }
    if (!e.friendly_name.empty() &&
        PKCS12_add_friendlyname_utf8(kbag, e.friendly_name.c_str(), -1) != 1) {
      return OpenSslError("PKCS#12: friendlyName");
    }
  }
  for (const Pkcs12Entry& e : entries) {
    for (X509* c : e.chain) {
      if (c == nullptr) continue;
      if (auto st = add_cert(c, nullptr, 0, ""); !st.ok()) return st;
    }
  }

  STACK_OF(PKCS7)* safes_raw = nullptr;
  std::unique_ptr<STACK_OF(PKCS7), SafesDeleter> safes;
  if (PKCS12_add_safe_ex(&safes_raw, cert_bags.get(), cert_nid, iter, pass.c_str(), libctx,
                         propq) != 1) {
    safes.reset(safes_raw);
    return OpenSslError("PKCS#12: certificate safe");
  }
  safes.reset(safes_raw);
  // Keys are already PKCS#8-encrypted: their safe is plain data.
  if (PKCS12_add_safe_ex(&safes_raw, key_bags.get(), -1, 0, nullptr, nullptr, nullptr) != 1) {
    return OpenSslError("PKCS#12: key safe");
  }
  std::unique_ptr<PKCS12, P12Deleter> p12(PKCS12_add_safes_ex(safes.get(), 0, libctx, propq));
  if (!p12) return OpenSslError("PKCS#12: assemble");
  if (PKCS12_set_mac(p12.get(), pass.c_str(), -1, nullptr, 0, iter, mac_md) != 1) {
    return OpenSslError("PKCS#12: MAC");
  }
  unsigned char* der = nullptr;
  int len = i2d_PKCS12(p12.get(), &der);
  if (len <= 0) return OpenSslError("PKCS#12: encode");
  std::vector<uint8_t> out(der, der + len);
  OPENSSL_free(der);
  return out;
}

OSSL_LIB_CTX* LegacyReadContext(std::string* load_error) {
  // Built once: OpenSSL's default and legacy providers in a context of their
  // own, no configuration file read. It only decrypts PFX contents; keys are
  // decoded in the default context, and nothing is written or generated here.
  struct Context {
    ossl::UniquePtr<OSSL_LIB_CTX> ctx;
    std::string error;
  };
  static const Context* context = [] {
    auto* c = new Context;
    c->ctx.reset(OSSL_LIB_CTX_new());
    if (!c->ctx) {
      c->error = "OSSL_LIB_CTX_new failed";
      ERR_clear_error();
      return c;
    }
    if (OSSL_PROVIDER_load(c->ctx.get(), "default") == nullptr) {
      c->error = std::string(OpenSslError("loading OpenSSL's default provider").message());
      c->ctx.reset();
      return c;
    }
    if (OSSL_PROVIDER_load(c->ctx.get(), "legacy") == nullptr) {
      // Without it, RC2 and RC4 stay unreadable; everything else still reads.
      c->error = StrCat(std::string(OpenSslError("loading OpenSSL's legacy provider").message()),
                        " (Debian: legacy.so of libssl3, in ",
                        OPENSSL_info(OPENSSL_INFO_MODULES_DIR), ")");
    }
    return c;
  }();
  if (load_error != nullptr) *load_error = context->error;
  return context->ctx.get();
}

namespace {

// The encryption of a safe or a key bag: its name, and whether the reading
// context has the cipher it needs.
struct PbeAlgorithm {
  std::string name;
  bool available = true;
};

PbeAlgorithm DescribePbe(const X509_ALGOR* algorithm, OSSL_LIB_CTX* ctx) {
  PbeAlgorithm out;
  const ASN1_OBJECT* oid = nullptr;
  X509_ALGOR_get0(&oid, nullptr, nullptr, algorithm);
  const int nid = OBJ_obj2nid(oid);
  char text[128] = {0};
  OBJ_obj2txt(text, sizeof text, oid, 0);
  out.name = text;
  if (nid == NID_pbes2) return out;  // PBES2: its cipher is checked when it runs
  int cipher_nid = NID_undef;
  int md_nid = NID_undef;
  if (nid == NID_undef ||
      EVP_PBE_find(EVP_PBE_TYPE_OUTER, nid, &cipher_nid, &md_nid, nullptr) != 1) {
    out.available = false;
    return out;
  }
  if (cipher_nid != NID_undef) {
    ossl::UniquePtr<EVP_CIPHER> cipher(EVP_CIPHER_fetch(ctx, OBJ_nid2sn(cipher_nid), nullptr));
    out.available = cipher != nullptr;
  }
  ERR_clear_error();
  return out;
}

// Why an encrypted part did not decrypt: an algorithm this OpenSSL lacks, a
// wrong password (no MAC to tell), or damage (the MAC verified the password).
absl::Status DecryptFailure(const std::string& what, const X509_ALGOR* algorithm, OSSL_LIB_CTX* ctx,
                            bool mac_verified) {
  ERR_clear_error();
  const PbeAlgorithm pbe = DescribePbe(algorithm, ctx);
  if (!pbe.available) {
    std::string load_error;
    LegacyReadContext(&load_error);
    return absl::UnimplementedError(
        StrCat("PKCS#12: unsupported algorithm: the ", what, " is encrypted with ", pbe.name,
               ", which this OpenSSL cannot decrypt",
               load_error.empty() ? std::string() : StrCat(" (", load_error, ")")));
  }
  if (!mac_verified) {
    return absl::PermissionDeniedError(
        StrCat("wrong password for the PFX: its ", what, " (", pbe.name,
               ") does not decrypt with it (the file has no MAC to tell a wrong password from "
               "damage)"));
  }
  return absl::DataLossError(StrCat("PKCS#12: the ", what, " (", pbe.name,
                                    ") does not decrypt with the password its MAC verified: the "
                                    "file is damaged"));
}

}  // namespace

absl::StatusOr<Pkcs12Contents> ReadPkcs12(std::span<const uint8_t> der,
                                          const hsm::SecretString& password) {
  const unsigned char* p = der.data();
  std::unique_ptr<PKCS12, P12Deleter> p12(d2i_PKCS12(nullptr, &p, static_cast<long>(der.size())));
  if (!p12 || p != der.data() + der.size()) {
    ERR_clear_error();
    return absl::DataLossError("not a DER PKCS#12 (PFX) file");
  }
  std::string load_error;
  OSSL_LIB_CTX* ctx = LegacyReadContext(&load_error);
  if (ctx == nullptr) {
    return absl::InternalError(StrCat("PKCS#12: no library context to read it: ", load_error));
  }
  CPassword pass(password);
  const bool mac_present = PKCS12_mac_present(p12.get()) == 1;
  if (mac_present && PKCS12_verify_mac(p12.get(), pass.c_str(), -1) != 1) {
    ERR_clear_error();
    return absl::PermissionDeniedError(
        "wrong password for the PFX (its MAC does not verify with it), or the file is damaged");
  }
  std::unique_ptr<STACK_OF(PKCS7), SafesDeleter> safes(PKCS12_unpack_authsafes(p12.get()));
  if (!safes) return OpenSslError("PKCS#12: contents", absl::StatusCode::kDataLoss);

  Pkcs12Contents out;
  std::vector<ossl::UniquePtr<X509>> certs;
  std::vector<std::string> cert_names;
  absl::Status failure;
  std::function<void(const STACK_OF(PKCS12_SAFEBAG)*)> walk = [&](const STACK_OF(PKCS12_SAFEBAG) *
                                                                  bags) {
    for (int i = 0; failure.ok() && i < sk_PKCS12_SAFEBAG_num(bags); ++i) {
      const PKCS12_SAFEBAG* bag = sk_PKCS12_SAFEBAG_value(bags, i);
      char* fname = PKCS12_get_friendlyname(const_cast<PKCS12_SAFEBAG*>(bag));
      std::string name = fname != nullptr ? fname : "";
      OPENSSL_free(fname);
      switch (PKCS12_SAFEBAG_get_nid(bag)) {
        case NID_keyBag:
        case NID_pkcs8ShroudedKeyBag: {
          std::unique_ptr<PKCS8_PRIV_KEY_INFO, P8Deleter> owned;
          const PKCS8_PRIV_KEY_INFO* p8 = nullptr;
          if (PKCS12_SAFEBAG_get_nid(bag) == NID_keyBag) {
            p8 = PKCS12_SAFEBAG_get0_p8inf(bag);
          } else {
            // Decrypted in the reading context (RC2, 3DES...); decoded below
            // in the default one, so the key belongs to no legacy provider.
            owned.reset(PKCS12_decrypt_skey_ex(bag, pass.c_str(), -1, ctx, nullptr));
            if (!owned) {
              const X509_ALGOR* alg = nullptr;
              X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, nullptr);
              failure = DecryptFailure(StrCat("key ", out.keys.size() + 1), alg, ctx, mac_present);
              return;
            }
            p8 = owned.get();
          }
          ossl::UniquePtr<EVP_PKEY> key(p8 != nullptr ? EVP_PKCS82PKEY(p8) : nullptr);
          if (!key) {
            failure = OpenSslError(StrCat("PKCS#12: key ", out.keys.size() + 1, " does not decode"),
                                   absl::StatusCode::kDataLoss);
            return;
          }
          out.keys.push_back({std::move(key), nullptr, name});
          break;
        }
        case NID_certBag:
          if (PKCS12_SAFEBAG_get_bag_nid(bag) == NID_x509Certificate) {
            ossl::UniquePtr<X509> cert(PKCS12_SAFEBAG_get1_cert(bag));
            if (!cert) {
              failure = OpenSslError("PKCS#12: certificate", absl::StatusCode::kDataLoss);
              return;
            }
            certs.push_back(std::move(cert));
            cert_names.push_back(name);
          }
          break;
        case NID_safeContentsBag:
          walk(PKCS12_SAFEBAG_get0_safes(bag));
          break;
        default:
          break;  // CRL and secret bags: not used for keys
      }
    }
  };
  for (int i = 0; failure.ok() && i < sk_PKCS7_num(safes.get()); ++i) {
    PKCS7* safe = sk_PKCS7_value(safes.get(), i);
    std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), BagsDeleter> bags;
    const int nid = OBJ_obj2nid(safe->type);
    if (nid == NID_pkcs7_data) {
      bags.reset(PKCS12_unpack_p7data(safe));
      if (!bags)
        return OpenSslError("PKCS#12: a safe does not decode", absl::StatusCode::kDataLoss);
    } else if (nid == NID_pkcs7_encrypted) {
      // PKCS12_unpack_p7encdata would decrypt in the default context, which
      // has no RC2 (the Windows XP/2003 export default): decrypt here.
      const PKCS7_ENC_CONTENT* enc =
          safe->d.encrypted != nullptr ? safe->d.encrypted->enc_data : nullptr;
      if (enc == nullptr || enc->algorithm == nullptr || enc->enc_data == nullptr) {
        return absl::DataLossError("PKCS#12: an encrypted safe has no content");
      }
      bags.reset(static_cast<STACK_OF(PKCS12_SAFEBAG)*>(
          PKCS12_item_decrypt_d2i_ex(enc->algorithm, ASN1_ITEM_rptr(PKCS12_SAFEBAGS), pass.c_str(),
                                     -1, enc->enc_data, 1, ctx, nullptr)));
      if (!bags) {
        return DecryptFailure(StrCat("safe ", i + 1, " (certificates)"), enc->algorithm, ctx,
                              mac_present);
      }
    } else {
      continue;
    }
    walk(bags.get());
  }
  if (!failure.ok()) return failure;
  for (auto& k : out.keys) {
    for (size_t c = 0; c < certs.size(); ++c) {
      if (certs[c] && X509_check_private_key(certs[c].get(), k.key.get()) == 1) {
        k.certificate = std::move(certs[c]);
        if (k.friendly_name.empty()) k.friendly_name = cert_names[c];
        break;
      }
    }
    ERR_clear_error();
  }
  for (auto& c : certs) {
    if (c) out.other_certificates.push_back(std::move(c));
  }
  return out;
}

}  // namespace keywarden::pki
