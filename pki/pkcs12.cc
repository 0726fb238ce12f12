#include "pki/pkcs12.h"

#include <algorithm>
#include <functional>

#include <openssl/err.h>
#include <openssl/pkcs12.h>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"

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
        PKCS12_add_key_ex(&key_raw, e.key, 0, iter, key_nid, pass.c_str(), nullptr, nullptr);
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
  if (PKCS12_add_safe_ex(&safes_raw, cert_bags.get(), cert_nid, iter, pass.c_str(), nullptr,
                         nullptr) != 1) {
    safes.reset(safes_raw);
    return OpenSslError("PKCS#12: certificate safe");
  }
  safes.reset(safes_raw);
  // Keys are already PKCS#8-encrypted: their safe is plain data.
  if (PKCS12_add_safe_ex(&safes_raw, key_bags.get(), -1, 0, nullptr, nullptr, nullptr) != 1) {
    return OpenSslError("PKCS#12: key safe");
  }
  std::unique_ptr<PKCS12, P12Deleter> p12(PKCS12_add_safes_ex(safes.get(), 0, nullptr, nullptr));
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

absl::StatusOr<Pkcs12Contents> ReadPkcs12(std::span<const uint8_t> der,
                                          const hsm::SecretString& password) {
  const unsigned char* p = der.data();
  std::unique_ptr<PKCS12, P12Deleter> p12(d2i_PKCS12(nullptr, &p, static_cast<long>(der.size())));
  if (!p12 || p != der.data() + der.size()) {
    ERR_clear_error();
    return absl::DataLossError("not a DER PKCS#12 (PFX) file");
  }
  CPassword pass(password);
  if (PKCS12_mac_present(p12.get()) && PKCS12_verify_mac(p12.get(), pass.c_str(), -1) != 1) {
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
            owned.reset(PKCS12_decrypt_skey(bag, pass.c_str(), -1));
            p8 = owned.get();
          }
          ossl::UniquePtr<EVP_PKEY> key(p8 != nullptr ? EVP_PKCS82PKEY(p8) : nullptr);
          if (!key) {
            failure = OpenSslError("PKCS#12: a key does not decrypt or decode",
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
    } else if (nid == NID_pkcs7_encrypted) {
      bags.reset(PKCS12_unpack_p7encdata(safe, pass.c_str(), -1));
    } else {
      continue;
    }
    if (!bags) {
      return OpenSslError(
          "PKCS#12: a safe does not decrypt (a cipher OpenSSL's default provider lacks, such as "
          "RC2?)",
          absl::StatusCode::kDataLoss);
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
