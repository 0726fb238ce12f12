#include "hsm/selftest.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>
#include <string_view>

#include "hsm/keys.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/symmetric.h"

namespace keywarden::hsm {
namespace {

constexpr char kCaSigning[] = "CA signing";
constexpr char kExchange[] = "exchange key";
constexpr char kArchival[] = "archival";
constexpr char kTokenRole[] = "token";

// A mechanism a role needs, with the operation flag it must allow.
struct Need {
  const char* role;
  CK_MECHANISM_TYPE mechanism;
  const char* name;
  CK_FLAGS flag;
  const char* operation;
  CK_ULONG key_bits;  // a key size the mechanism must allow (0: none to check)
  bool archival;      // needed for key archival
  enum Scheme { kAny, kDes3, kAes } scheme;
  bool optional;  // only some deployments use it (EC, PSS, OAEP...)
};

constexpr Need kNeeds[] = {
    {kCaSigning, CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", CKF_GENERATE_KEY_PAIR,
     "generate key pair", 2048, false, Need::kAny, false},
    {kCaSigning, CKM_RSA_PKCS, "CKM_RSA_PKCS", CKF_SIGN, "sign", 2048, false, Need::kAny, false},
    {kCaSigning, CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", CKF_SIGN, "sign", 2048, false, Need::kAny,
     true},
    {kCaSigning, CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", CKF_GENERATE_KEY_PAIR,
     "generate key pair", 256, false, Need::kAny, true},
    {kCaSigning, CKM_ECDSA, "CKM_ECDSA", CKF_SIGN, "sign", 256, false, Need::kAny, true},
    {kExchange, CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", CKF_GENERATE_KEY_PAIR,
     "generate key pair", 2048, true, Need::kAny, false},
    // Windows clients wrap the archived key's content key with PKCS#1 v1.5.
    {kExchange, CKM_RSA_PKCS, "CKM_RSA_PKCS", CKF_DECRYPT, "decrypt", 2048, true, Need::kAny,
     false},
    {kExchange, CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", CKF_DECRYPT, "decrypt", 2048, true,
     Need::kAny, true},
    {kArchival, CKM_DES3_KEY_GEN, "CKM_DES3_KEY_GEN", CKF_GENERATE, "generate key", 0, true,
     Need::kDes3, false},
    {kArchival, CKM_DES3_CBC_PAD, "CKM_DES3_CBC_PAD", CKF_ENCRYPT, "encrypt", 0, true, Need::kDes3,
     false},
    {kArchival, CKM_RSA_PKCS, "CKM_RSA_PKCS", CKF_WRAP, "wrap", 2048, true, Need::kDes3, false},
    {kArchival, CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", CKF_GENERATE, "generate key", 0, true,
     Need::kAes, false},
    {kArchival, CKM_AES_CBC_PAD, "CKM_AES_CBC_PAD", CKF_ENCRYPT, "encrypt", 0, true, Need::kAes,
     false},
    {kArchival, CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", CKF_WRAP, "wrap", 2048, true, Need::kAes,
     false},
};

class Run {
 public:
  Run(std::shared_ptr<Token> token, const SelfTestOptions& options)
      : token_(std::move(token)), options_(options) {}

  std::vector<SelfTestCheck> Go() {
    Mechanisms();
    if (!options_.live) return std::move(checks_);
    {
      auto session = token_->Acquire();
      if (!session.ok()) {
        Add(kTokenRole, "open a session", CheckResult::kFail, RvOf(session.status()),
            std::string(session.status().message()));
        checks_.back().token_fault = IsHsmFault(session.status());
        return std::move(checks_);
      }
      if (!LoginState(*session)) return std::move(checks_);
      if (!options_.archival_only) Sessions();
      Random(*session);
      RsaKeyPair(*session);
      if (!options_.archival_only) EcKeyPair(*session);
      for (CK_OBJECT_HANDLE h : created_) {
        session->Call("C_DestroyObject", session->fn()->C_DestroyObject, session->handle(), h);
      }
    }
    // With the session given back: the content key takes one of its own
    // (a daemon with [hsm] max_sessions = 1 runs this too).
    ArchivalRoundTrip(SymmetricAlgorithm::kDes3, WrapMechanism::kRsaPkcs1,
                      options_.archival_scheme != "des3-rsa-pkcs1");
    ArchivalRoundTrip(SymmetricAlgorithm::kAes256, WrapMechanism::kRsaOaepSha1,
                      options_.archival_scheme != "aes256-rsa-oaep");
    return std::move(checks_);
  }

 private:
  void Add(const std::string& role, const std::string& name, CheckResult result, CK_RV rv,
           const std::string& detail, bool required = true) {
    SelfTestCheck c;
    c.role = role;
    c.name = name;
    c.result = result;
    c.rv = rv;
    c.detail = detail;
    c.required = required;
    checks_.push_back(std::move(c));
  }

  static CK_RV RvOf(const absl::Status& st) { return Pkcs11RvOf(st).value_or(CKR_OK); }

  bool Optional(const Need& n) const {
    if (n.optional) return true;
    if (n.scheme == Need::kDes3) return options_.archival_scheme != "des3-rsa-pkcs1";
    if (n.scheme == Need::kAes) return options_.archival_scheme != "aes256-rsa-oaep";
    return false;
  }

  void Mechanisms() {
    const CK_SLOT_ID slot = token_->info().slot;
    CK_ULONG count = 0;
    CK_RV rv = token_->module().Call("C_GetMechanismList", token_->fn()->C_GetMechanismList, slot,
                                     static_cast<CK_MECHANISM_TYPE_PTR>(nullptr), &count);
    std::vector<CK_MECHANISM_TYPE> list(count);
    if (rv == CKR_OK && count > 0) {
      rv = token_->module().Call("C_GetMechanismList", token_->fn()->C_GetMechanismList, slot,
                                 list.data(), &count);
      list.resize(count);
    }
    if (rv != CKR_OK) {
      Add(kTokenRole, "C_GetMechanismList", CheckResult::kFail, rv,
          "the token does not list its mechanisms");
      return;
    }
    for (const Need& n : kNeeds) {
      if (options_.archival_only && !n.archival) continue;
      const std::string what = StrCat(n.name, " ", n.operation);
      const bool optional = Optional(n);
      // The exchange key's size is configured; the archival wrap is to KRAs.
      const CK_ULONG key_bits = n.key_bits != 0 && std::string_view(n.role) == kExchange
                                    ? options_.exchange_bits
                                    : n.key_bits;
      if (std::find(list.begin(), list.end(), n.mechanism) == list.end()) {
        Add(n.role, what, CheckResult::kFail, CKR_MECHANISM_INVALID, "not in the mechanism list",
            !optional);
        continue;
      }
      CK_MECHANISM_INFO info{};
      rv = token_->module().Call("C_GetMechanismInfo", token_->fn()->C_GetMechanismInfo, slot,
                                 n.mechanism, &info);
      if (rv != CKR_OK) {
        Add(n.role, what, CheckResult::kFail, rv, "C_GetMechanismInfo failed", !optional);
      } else if ((info.flags & n.flag) == 0) {
        Add(n.role, what, CheckResult::kFail, CKR_OK,
            StrCat("listed, but its flags do not allow ", n.operation), !optional);
      } else if (key_bits != 0 && (info.ulMinKeySize > key_bits ||
                                   (info.ulMaxKeySize != 0 && info.ulMaxKeySize < key_bits))) {
        Add(n.role, what, CheckResult::kFail, CKR_OK,
            StrCat("key sizes ", info.ulMinKeySize, "..", info.ulMaxKeySize, " exclude ", key_bits),
            !optional);
      } else {
        Add(n.role, what, CheckResult::kPass, CKR_OK,
            key_bits != 0 ? StrCat("key sizes ", info.ulMinKeySize, "..", info.ulMaxKeySize)
                          : std::string(),
            !optional);
      }
    }
  }

  bool LoginState(Session& s) {
    CK_SESSION_INFO info{};
    CK_RV rv = s.Call("C_GetSessionInfo", s.fn()->C_GetSessionInfo, s.handle(), &info);
    const bool user = rv == CKR_OK &&
                      (info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS);
    if (!user) {
      Add(kTokenRole, "logged in as the user", CheckResult::kFail, rv,
          rv != CKR_OK ? "C_GetSessionInfo failed" : "not logged in: live checks skipped");
      return false;
    }
    Add(kTokenRole, "logged in as the user", CheckResult::kPass, CKR_OK, "");
    return true;
  }

  void Sessions() {
    const CK_TOKEN_INFO& info = token_->info().info;
    const CK_ULONG max = info.ulMaxSessionCount;
    if (max == CK_EFFECTIVELY_INFINITE || max == CK_UNAVAILABLE_INFORMATION) {
      Add(kTokenRole, "session limit", CheckResult::kPass, CKR_OK,
          max == CK_EFFECTIVELY_INFINITE ? "no limit" : "the token does not say");
    } else if (options_.sessions_needed > max) {
      Add(kTokenRole, "session limit", CheckResult::kFail, CKR_OK,
          StrCat("at most ", max, " sessions; ", options_.sessions_needed, " configured"));
    } else {
      Add(kTokenRole, "session limit", CheckResult::kPass, CKR_OK, StrCat("at most ", max));
    }
  }

  void Random(Session& s) {
    std::vector<uint8_t> r(32, 0);
    CK_RV rv = s.Call("C_GenerateRandom", s.fn()->C_GenerateRandom, s.handle(), r.data(),
                      static_cast<CK_ULONG>(r.size()));
    const bool zero = std::all_of(r.begin(), r.end(), [](uint8_t b) { return b == 0; });
    Add(kTokenRole, "C_GenerateRandom",
        rv == CKR_OK && !zero ? CheckResult::kPass : CheckResult::kFail, rv,
        rv != CKR_OK ? "failed" : (zero ? "32 zero bytes" : ""));
  }

  // A session key pair (CKA_TOKEN=FALSE) with a random CKA_ID; the handles
  // are destroyed at the end.
  std::optional<std::pair<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>> GenerateSessionPair(
      Session& s, bool rsa, const std::string& role, std::vector<uint8_t>* id) {
    id->resize(16);
    RAND_bytes(id->data(), static_cast<int>(id->size()));
    static const uint8_t kF4[] = {0x01, 0x00, 0x01};
    static const uint8_t kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ULONG bits = rsa ? options_.exchange_bits : 0;
    std::vector<CK_ATTRIBUTE> pub = {Attr(CKA_TOKEN, kFalse), Attr(CKA_VERIFY, kTrue),
                                     Attr(CKA_ID, id->data(), id->size())};
    std::vector<CK_ATTRIBUTE> priv = {
        Attr(CKA_TOKEN, kFalse),    Attr(CKA_PRIVATE, kTrue),
        Attr(CKA_SENSITIVE, kTrue), Attr(CKA_EXTRACTABLE, kFalse),
        Attr(CKA_SIGN, kTrue),      Attr(CKA_ID, id->data(), id->size()),
    };
    CK_MECHANISM mech{rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    if (rsa) {
      pub.push_back(Attr(CKA_MODULUS_BITS, bits));
      pub.push_back(Attr(CKA_PUBLIC_EXPONENT, kF4, sizeof kF4));
      pub.push_back(Attr(CKA_ENCRYPT, kTrue));
      priv.push_back(Attr(CKA_DECRYPT, kTrue));
    } else {
      pub.push_back(Attr(CKA_EC_PARAMS, kP256, sizeof kP256));
    }
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    CK_RV rv = s.Call("C_GenerateKeyPair", s.fn()->C_GenerateKeyPair, s.handle(), &mech, pub.data(),
                      static_cast<CK_ULONG>(pub.size()), priv.data(),
                      static_cast<CK_ULONG>(priv.size()), &hpub, &hpriv);
    const std::string name = rsa ? StrCat("RSA-", bits, " key pair (session object)")
                                 : "EC P-256 key pair (session object)";
    if (rv != CKR_OK) {
      Add(role, name, CheckResult::kFail, rv, "C_GenerateKeyPair failed", rsa);
      return std::nullopt;
    }
    created_.push_back(hpub);
    created_.push_back(hpriv);
    Add(role, name, CheckResult::kPass, CKR_OK, "", rsa);
    return std::make_pair(hpub, hpriv);
  }

  // Sign `tbs` with the token key; verify in software with `pub`.
  void SignCheck(Session& s, const std::string& role, const std::string& name,
                 CK_OBJECT_HANDLE priv, CK_MECHANISM mech, const std::vector<uint8_t>& tbs,
                 const std::function<bool(const std::vector<uint8_t>&)>& verify, bool required) {
    CK_RV rv = s.Call("C_SignInit", s.fn()->C_SignInit, s.handle(), &mech, priv);
    std::vector<uint8_t> sig(1024);
    CK_ULONG len = static_cast<CK_ULONG>(sig.size());
    if (rv == CKR_OK) {
      rv = s.Call("C_Sign", s.fn()->C_Sign, s.handle(), const_cast<CK_BYTE_PTR>(tbs.data()),
                  static_cast<CK_ULONG>(tbs.size()), sig.data(), &len);
    }
    if (rv != CKR_OK) {
      Add(role, name, CheckResult::kFail, rv, "the token refused to sign", required);
      return;
    }
    sig.resize(len);
    const bool ok = verify(sig);
    Add(role, name, ok ? CheckResult::kPass : CheckResult::kFail, CKR_OK,
        ok ? "verified in software" : "the signature does not verify", required);
  }

  void RsaKeyPair(Session& s) {
    std::vector<uint8_t> id;
    auto pair = GenerateSessionPair(s, true, kExchange, &id);
    if (!pair) return;
    auto pub = PublicKeyFromObject(s, pair->first);
    if (!pub.ok()) {
      Add(kExchange, "read the public key", CheckResult::kFail, RvOf(pub.status()),
          std::string(pub.status().message()));
      return;
    }
    // Another session sees the key (the daemon's sessions share keys);
    // a pool of one session cannot lend a second while this one is held.
    if (token_->pool_stats().max_sessions < 2) {
      Add(kTokenRole, "key visible from another session", CheckResult::kSkip, CKR_OK,
          "one session configured");
    } else {
      auto other = token_->Acquire();
      std::optional<std::vector<CK_OBJECT_HANDLE>> found;
      absl::Status why = other.status();
      if (other.ok()) {
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        auto f = FindObjects(*other, {Attr(CKA_CLASS, cls), Attr(CKA_ID, id.data(), id.size())});
        if (f.ok()) found = *f;
        why = f.status();
      }
      const bool seen = found && found->size() == 1;
      Add(kTokenRole, "key visible from another session",
          seen ? CheckResult::kPass : CheckResult::kFail, RvOf(why),
          seen ? "" : (why.ok() ? "not found" : std::string(why.message())));
    }
    // Key transport as Windows clients use it, then OAEP.
    for (const bool oaep : {false, true}) {
      std::vector<uint8_t> secret(24);
      RAND_bytes(secret.data(), static_cast<int>(secret.size()));
      ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new(pub->get(), nullptr));
      size_t out_len = 0;
      std::vector<uint8_t> enc;
      if (ctx && EVP_PKEY_encrypt_init(ctx.get()) == 1 &&
          EVP_PKEY_CTX_set_rsa_padding(ctx.get(),
                                       oaep ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING) == 1 &&
          EVP_PKEY_encrypt(ctx.get(), nullptr, &out_len, secret.data(), secret.size()) == 1) {
        enc.resize(out_len);
        if (EVP_PKEY_encrypt(ctx.get(), enc.data(), &out_len, secret.data(), secret.size()) != 1)
          enc.clear();
        else
          enc.resize(out_len);
      }
      const std::string name = oaep ? "CKM_RSA_PKCS_OAEP (SHA-1) decrypt" : "CKM_RSA_PKCS decrypt";
      if (enc.empty()) {
        Add(kExchange, name, CheckResult::kFail, CKR_OK, "software encryption failed", !oaep);
        continue;
      }
      CK_RSA_PKCS_OAEP_PARAMS params{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
      CK_MECHANISM mech = oaep ? CK_MECHANISM{CKM_RSA_PKCS_OAEP, &params, sizeof params}
                               : CK_MECHANISM{CKM_RSA_PKCS, nullptr, 0};
      CK_RV rv = s.Call("C_DecryptInit", s.fn()->C_DecryptInit, s.handle(), &mech, pair->second);
      std::vector<uint8_t> dec(512);
      CK_ULONG len = static_cast<CK_ULONG>(dec.size());
      if (rv == CKR_OK) {
        rv = s.Call("C_Decrypt", s.fn()->C_Decrypt, s.handle(), enc.data(),
                    static_cast<CK_ULONG>(enc.size()), dec.data(), &len);
      }
      if (rv != CKR_OK) {
        Add(kExchange, name, CheckResult::kFail, rv, "the token refused to decrypt", !oaep);
        continue;
      }
      dec.resize(len);
      const bool same = dec == secret;
      OPENSSL_cleanse(dec.data(), dec.size());
      Add(kExchange, name, same ? CheckResult::kPass : CheckResult::kFail, CKR_OK,
          same ? "matches" : "decrypts to other bytes", !oaep);
    }
    if (options_.archival_only) return;
    // CA signatures: PKCS#1 v1.5 over a DigestInfo, and PSS, as the provider makes them.
    std::vector<uint8_t> digest(32);
    RAND_bytes(digest.data(), static_cast<int>(digest.size()));
    static const uint8_t kSha256Info[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                          0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                          0x01, 0x05, 0x00, 0x04, 0x20};
    std::vector<uint8_t> info(kSha256Info, kSha256Info + sizeof kSha256Info);
    info.insert(info.end(), digest.begin(), digest.end());
    auto verify = [&](int padding, const std::vector<uint8_t>& sig) {
      ossl::UniquePtr<EVP_PKEY_CTX> v(EVP_PKEY_CTX_new(pub->get(), nullptr));
      if (!v || EVP_PKEY_verify_init(v.get()) != 1 ||
          EVP_PKEY_CTX_set_rsa_padding(v.get(), padding) != 1 ||
          EVP_PKEY_CTX_set_signature_md(v.get(), EVP_sha256()) != 1) {
        return false;
      }
      if (padding == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(v.get(), 32) != 1) {
        return false;
      }
      return EVP_PKEY_verify(v.get(), sig.data(), sig.size(), digest.data(), digest.size()) == 1;
    };
    SignCheck(
        s, kCaSigning, "CKM_RSA_PKCS signature (SHA-256 DigestInfo)", pair->second,
        CK_MECHANISM{CKM_RSA_PKCS, nullptr, 0}, info,
        [&](const std::vector<uint8_t>& sig) { return verify(RSA_PKCS1_PADDING, sig); }, true);
    CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
    SignCheck(
        s, kCaSigning, "CKM_RSA_PKCS_PSS signature (SHA-256)", pair->second,
        CK_MECHANISM{CKM_RSA_PKCS_PSS, &pss, sizeof pss}, digest,
        [&](const std::vector<uint8_t>& sig) { return verify(RSA_PKCS1_PSS_PADDING, sig); }, false);
  }

  void EcKeyPair(Session& s) {
    std::vector<uint8_t> id;
    auto pair = GenerateSessionPair(s, false, kCaSigning, &id);
    if (!pair) return;
    auto pub = PublicKeyFromObject(s, pair->first);
    if (!pub.ok()) {
      Add(kCaSigning, "read the EC public key", CheckResult::kFail, RvOf(pub.status()),
          std::string(pub.status().message()), false);
      return;
    }
    std::vector<uint8_t> digest(32);
    RAND_bytes(digest.data(), static_cast<int>(digest.size()));
    SignCheck(
        s, kCaSigning, "CKM_ECDSA signature (P-256)", pair->second,
        CK_MECHANISM{CKM_ECDSA, nullptr, 0}, digest,
        [&](const std::vector<uint8_t>& raw) {
          // PKCS#11 gives r || s; OpenSSL verifies DER.
          if (raw.size() != 64) return false;
          ossl::UniquePtr<ECDSA_SIG> sig(ECDSA_SIG_new());
          BIGNUM* r = BN_bin2bn(raw.data(), 32, nullptr);
          BIGNUM* sv = BN_bin2bn(raw.data() + 32, 32, nullptr);
          if (!sig || r == nullptr || sv == nullptr || ECDSA_SIG_set0(sig.get(), r, sv) != 1) {
            BN_free(r);
            BN_free(sv);
            return false;
          }
          unsigned char* der = nullptr;
          const int len = i2d_ECDSA_SIG(sig.get(), &der);
          ossl::UniquePtr<EVP_PKEY_CTX> v(EVP_PKEY_CTX_new(pub->get(), nullptr));
          const bool ok = len > 0 && v && EVP_PKEY_verify_init(v.get()) == 1 &&
                          EVP_PKEY_verify(v.get(), der, static_cast<size_t>(len), digest.data(),
                                          digest.size()) == 1;
          OPENSSL_free(der);
          return ok;
        },
        false);
  }

  // The archival pipeline as KeyArchiver runs it: a content key made on
  // the token, a CBC encryption on the token, the key wrapped to an RSA
  // public key (a software KRA here); the software side opens it again.
  void ArchivalRoundTrip(SymmetricAlgorithm algorithm, WrapMechanism wrap, bool optional) {
    const bool des3 = algorithm == SymmetricAlgorithm::kDes3;
    const std::string name = des3 ? "3DES content key, CBC encrypt, PKCS#1 wrap (round trip)"
                                  : "AES-256 content key, CBC encrypt, OAEP wrap (round trip)";
    auto key = SessionKey::Generate(token_, algorithm);
    if (!key.ok()) {
      Add(kArchival, name, CheckResult::kFail, RvOf(key.status()),
          std::string(key.status().message()), !optional);
      return;
    }
    std::vector<uint8_t> plain(100);
    RAND_bytes(plain.data(), static_cast<int>(plain.size()));
    auto ct = key->Encrypt(plain);
    if (!ct.ok()) {
      Add(kArchival, name, CheckResult::kFail, RvOf(ct.status()),
          std::string(ct.status().message()), !optional);
      return;
    }
    // One software KRA key for both schemes (an RSA key generation each is slow).
    if (!kra_) kra_.reset(EVP_RSA_gen(2048));
    EVP_PKEY* kra = kra_.get();
    auto wrapped = kra != nullptr
                       ? key->WrapTo(kra, wrap)
                       : absl::StatusOr<std::vector<uint8_t>>(absl::InternalError("EVP_RSA_gen"));
    if (!wrapped.ok()) {
      Add(kArchival, name, CheckResult::kFail, RvOf(wrapped.status()),
          std::string(wrapped.status().message()), !optional);
      return;
    }
    // Software: unwrap, then decrypt the content.
    std::vector<uint8_t> cek(512);  // RSA decryption wants room for a whole block
    size_t cek_len = cek.size();
    ossl::UniquePtr<EVP_PKEY_CTX> d(EVP_PKEY_CTX_new(kra, nullptr));
    bool ok =
        d && EVP_PKEY_decrypt_init(d.get()) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(d.get(), wrap == WrapMechanism::kRsaPkcs1
                                                  ? RSA_PKCS1_PADDING
                                                  : RSA_PKCS1_OAEP_PADDING) == 1 &&
        EVP_PKEY_decrypt(d.get(), cek.data(), &cek_len, wrapped->data(), wrapped->size()) == 1 &&
        cek_len == key->key_length();
    std::vector<uint8_t> back(ct->data.size() + 32);
    int n1 = 0, n2 = 0;
    if (ok) {
      ossl::UniquePtr<EVP_CIPHER_CTX> c(EVP_CIPHER_CTX_new());
      ok = c &&
           EVP_DecryptInit_ex(c.get(), des3 ? EVP_des_ede3_cbc() : EVP_aes_256_cbc(), nullptr,
                              cek.data(), ct->iv.data()) == 1 &&
           EVP_DecryptUpdate(c.get(), back.data(), &n1, ct->data.data(),
                             static_cast<int>(ct->data.size())) == 1 &&
           EVP_DecryptFinal_ex(c.get(), back.data() + n1, &n2) == 1;
    }
    OPENSSL_cleanse(cek.data(), cek.size());
    back.resize(ok ? static_cast<size_t>(n1 + n2) : 0);
    ok = ok && back == plain;
    Add(kArchival, name, ok ? CheckResult::kPass : CheckResult::kFail, CKR_OK,
        ok ? "opened in software" : "the software side could not open what the token made",
        !optional);
  }

  std::shared_ptr<Token> token_;
  SelfTestOptions options_;
  std::vector<SelfTestCheck> checks_;
  std::vector<CK_OBJECT_HANDLE> created_;
  ossl::UniquePtr<EVP_PKEY> kra_;
};

}  // namespace

const char* CheckResultName(CheckResult r) {
  switch (r) {
    case CheckResult::kPass:
      return "pass";
    case CheckResult::kFail:
      return "fail";
    case CheckResult::kSkip:
      return "skip";
  }
  return "?";
}

std::vector<SelfTestCheck> RunSelfTest(const std::shared_ptr<Token>& token,
                                       const SelfTestOptions& options) {
  return Run(token, options).Go();
}

bool SelfTestPassed(const std::vector<SelfTestCheck>& checks) {
  return std::none_of(checks.begin(), checks.end(), [](const SelfTestCheck& c) {
    return c.required && c.result == CheckResult::kFail;
  });
}

std::string SelfTestFailures(const std::vector<SelfTestCheck>& checks) {
  std::string out;
  for (const SelfTestCheck& c : checks) {
    if (!c.required || c.result != CheckResult::kFail) continue;
    if (!out.empty()) out += "; ";
    out += c.name;
    if (c.rv != CKR_OK) out += StrCat(" -> ", RvName(c.rv));
    if (!c.detail.empty()) out += StrCat(" (", c.detail, ")");
  }
  return out;
}

bool SelfTestMetTokenFault(const std::vector<SelfTestCheck>& checks) {
  return std::any_of(checks.begin(), checks.end(), [](const SelfTestCheck& c) {
    return c.required && c.result == CheckResult::kFail && (c.token_fault || IsTokenFault(c.rv));
  });
}

}  // namespace keywarden::hsm
