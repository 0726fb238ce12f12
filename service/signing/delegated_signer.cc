#include "service/signing/delegated_signer.h"

#include <openssl/err.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "hsm/open.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/cores.h"
#include "pki/pkcs10.h"
#include "service/authz.h"
#include "service/errors.h"
#include "service/observe/metrics.h"

namespace keywarden::service::signing {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequestSize = 256 * 1024;

const char* SchemeKeyType(Scheme s) {
  return s == Scheme::kEcdsa ? "an EC" : "an RSA";
}

std::string Describe(const SigningKey& key) {
  return StrCat("signing key \"", key.alias, "\" (", key.token_key->Describe(), ")");
}

std::string AllowedNames(const SigningKey& key) {
  std::vector<std::string> names;
  for (Algorithm a : key.algorithms) names.push_back(Info(a).name);
  return StrJoin(names, ", ");
}

std::vector<uint8_t> PublicKeyDer(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key, &der);
  std::vector<uint8_t> out;
  if (len > 0) out.assign(der, der + len);
  OPENSSL_free(der);
  return out;
}

// The token of a key: an already open one when it is the same token of the
// same module, else a newly opened one (logged in with the key's PIN).
absl::StatusOr<std::shared_ptr<hsm::Token>> TokenFor(
    const Config& config, const SigningKeyConfig& kc, const hsm::Pkcs11Uri& uri,
    std::vector<std::shared_ptr<hsm::Token>>& tokens) {
  const std::string spec = !uri.module_path().empty()   ? uri.module_path()
                           : !uri.module_name().empty() ? uri.module_name()
                                                        : config.hsm.module;
  if (spec.empty()) {
    return absl::FailedPreconditionError(StrCat("signing key \"", kc.alias,
                                                "\": its URI names no module and [hsm] module is "
                                                "not set"));
  }
  auto module = hsm::Module::Load(spec);
  if (!module.ok()) return module.status();
  hsm::Token::Options options;
  options.max_sessions = static_cast<size_t>(config.hsm.max_sessions);
  auto found = hsm::Token::Open(*module, uri, options);
  if (!found.ok()) {
    return absl::Status(found.status().code(),
                        StrCat("signing key \"", kc.alias, "\": ", found.status().message()));
  }
  for (const auto& t : tokens) {
    if (&t->module() == module->get() && t->info().slot == (*found)->info().slot) return t;
  }
  std::optional<hsm::PinSource> pin_source;
  if (!kc.pin_source.empty() || !uri.pin_source().empty()) {
    auto parsed = hsm::PinSource::Parse(!kc.pin_source.empty() ? kc.pin_source : uri.pin_source());
    if (!parsed.ok()) return parsed.status();
    pin_source = *parsed;
  } else if (uri.has_pin_value()) {
    pin_source = hsm::PinSource::Value(uri.pin_value());
  }
  if (!pin_source) {
    return absl::FailedPreconditionError(
        StrCat("signing key \"", kc.alias, "\" is on token \"", (*found)->label(),
               "\", which is not the CA token: give the key a pin_source"));
  }
  auto pin = pin_source->Read();
  if (!pin.ok()) {
    return absl::Status(pin.status().code(),
                        StrCat("signing key \"", kc.alias, "\": ", pin.status().message()));
  }
  if (auto st = (*found)->Login(*pin); !st.ok()) {
    return absl::Status(st.code(), StrCat("signing key \"", kc.alias, "\": ", st.message()));
  }
  tokens.push_back(*found);
  return *found;
}

// This CA's certificate ([ca] certificate); null when none is configured
// or it cannot be read (the daemon does not start without it).
ossl::UniquePtr<X509> ThisCasCertificate(const Config& config) {
  if (config.ca.certificate.empty()) return nullptr;
  auto ca = pki::ReadPemCertificates(config.ca.certificate);
  if (!ca.ok() || ca->empty()) return nullptr;
  return std::move(ca->front());
}

// True when `cert` is byte for byte this CA's certificate `ca` (may be null).
bool IsThisCasCertificate(X509* ca, X509* cert) {
  return ca != nullptr && pki::CertificateDer(ca) == pki::CertificateDer(cert);
}

// True when `pub` is the public key of this CA's certificate `ca` (may be null).
bool IsThisCasKey(X509* ca, EVP_PKEY* pub) {
  if (ca == nullptr || pub == nullptr) return false;
  const bool same = EVP_PKEY_eq(X509_get0_pubkey(ca), pub) == 1;
  ERR_clear_error();
  return same;
}

// The key's certificate (and chain): from the configured file, else a
// certificate object on the token with the key's label/id and public key.
absl::Status LoadCertificate(const SigningKeyConfig& kc, SigningKey& key) {
  EVP_PKEY* pub = key.token_key->public_key.get();
  if (!kc.certificate.empty()) {
    auto certs = pki::ReadPemCertificates(kc.certificate);
    if (!certs.ok()) {
      return absl::FailedPreconditionError(
          StrCat("signing key \"", kc.alias, "\": certificate: ", certs.status().message()));
    }
    if (EVP_PKEY_eq(X509_get0_pubkey(certs->front().get()), pub) != 1) {
      ERR_clear_error();
      return absl::FailedPreconditionError(StrCat("signing key \"", kc.alias, "\": certificate ",
                                                  kc.certificate, " is not for ",
                                                  key.token_key->Describe()));
    }
    key.certificate = std::move(certs->front());
    for (size_t i = 1; i < certs->size(); ++i) key.chain.push_back(std::move((*certs)[i]));
    return absl::OkStatus();
  }
  auto on_token =
      hsm::FindCertificates(*key.token_key->token, key.token_key->label, key.token_key->id);
  if (!on_token.ok()) return on_token.status();
  for (auto& c : *on_token) {
    if (EVP_PKEY_eq(X509_get0_pubkey(c.get()), pub) == 1) {
      key.certificate = std::move(c);
      break;
    }
  }
  ERR_clear_error();
  return absl::OkStatus();
}

bool KeyTypeAllowed(const TemplateConfig& t, EVP_PKEY* key, std::string* type) {
  *type = EVP_PKEY_is_a(key, "RSA") ? "rsa" : EVP_PKEY_is_a(key, "EC") ? "ec" : "other";
  return std::find(t.key_types.begin(), t.key_types.end(), *type) != t.key_types.end();
}

}  // namespace

int SigningKey::PrincipalIndex(std::string_view principal) const {
  for (size_t i = 0; i < principals.size(); ++i) {
    if (principals[i] == principal) return static_cast<int>(i);
  }
  return -1;
}

SigningKey::~SigningKey() {
  for (Pool& p : pools) {
    for (Contexts& c : p.idle) {
      EVP_PKEY_CTX_free(c.sign);
      EVP_PKEY_CTX_free(c.verify);
    }
  }
}

absl::StatusOr<std::unique_ptr<DelegatedSigner>> DelegatedSigner::Open(
    const Config& config, std::shared_ptr<hsm::CryptoContext> crypto,
    std::vector<std::shared_ptr<hsm::Token>> open_tokens, AuditSink audit, Clock clock) {
  if (!crypto) return absl::InvalidArgumentError("delegated signing: no crypto context");
  std::unique_ptr<DelegatedSigner> signer(
      new DelegatedSigner(std::move(crypto), std::move(audit), std::move(clock)));
  signer->config_ = &config;
  signer->usage_since_ = signer->clock_();
  for (const AlgorithmInfo& a : kAlgorithms) {
    signer->digests_[static_cast<size_t>(a.id)].reset(
        EVP_MD_fetch(signer->crypto_->libctx(), a.digest, nullptr));
    if (!signer->digests_[static_cast<size_t>(a.id)]) {
      return hsm::OpenSslError(StrCat("delegated signing: digest ", a.digest));
    }
  }

  std::vector<std::shared_ptr<hsm::Token>> tokens = std::move(open_tokens);
  const size_t already_open = tokens.size();
  std::vector<bool> used(already_open, false);
  const ossl::UniquePtr<X509> this_ca = ThisCasCertificate(config);
  for (const SigningKeyConfig& kc : config.signing.keys) {
    auto uri = hsm::Pkcs11Uri::Parse(kc.key);
    if (!uri.ok()) {
      return absl::InvalidArgumentError(
          StrCat("signing key \"", kc.alias, "\": ", uri.status().message()));
    }
    auto token = TokenFor(config, kc, *uri, tokens);
    if (!token.ok()) return token.status();
    for (size_t i = 0; i < already_open; ++i) used[i] = used[i] || tokens[i] == *token;

    auto key = std::make_unique<SigningKey>();
    key->alias = kc.alias;
    auto token_key = hsm::FindPrivateKey(*token, *uri);
    if (!token_key.ok()) {
      return absl::Status(token_key.status().code(),
                          StrCat("signing key \"", kc.alias, "\": ", token_key.status().message()));
    }
    key->token_key = *token_key;
    key->ca_key = IsThisCasKey(this_ca.get(), key->token_key->public_key.get());
    if (key->ca_key && kc.templates.empty()) {
      // Raw signatures with the CA key would be certificates, CRLs or
      // anything else this CA signed with no policy and no record.
      return absl::FailedPreconditionError(
          StrCat(Describe(*key),
                 " is this CA's own signing key: it may only issue certificates through "
                 "templates (set templates), never sign callers' digests or data"));
    }
    auto pkey = signer->crypto_->Load(key->token_key);
    if (!pkey.ok()) return pkey.status();
    key->pkey = std::move(*pkey);
    key->public_key_der = PublicKeyDer(key->token_key->public_key.get());

    for (const std::string& name : kc.algorithms) {
      std::optional<Algorithm> a = ParseAlgorithm(name);
      if (!a) {
        return absl::InvalidArgumentError(
            StrCat("signing key \"", kc.alias, "\": unknown algorithm \"", name, "\""));
      }
      const bool ec = Info(*a).scheme == Scheme::kEcdsa;
      if (ec != (key->type() == hsm::KeyType::kEc)) {
        return absl::FailedPreconditionError(StrCat(Describe(*key), ": algorithm ", name, " needs ",
                                                    SchemeKeyType(Info(*a).scheme), " key"));
      }
      key->allowed[static_cast<size_t>(*a)] = true;
      key->algorithms.push_back(*a);
    }
    key->principals = kc.principals;
    key->templates = kc.templates;
    key->usage =
        std::make_unique<std::atomic<uint64_t>[]>(key->principals.size() * kAlgorithmCount);

    if (auto st = LoadCertificate(kc, *key); !st.ok()) return st;
    if (!key->templates.empty()) {
      if (!key->certificate) {
        return absl::FailedPreconditionError(
            StrCat(Describe(*key),
                   " offers templates but has no certificate to issue under (set "
                   "certificate, or put it on the token with the key's label)"));
      }
      if (X509_check_ca(key->certificate.get()) < 1 ||
          (X509_get_key_usage(key->certificate.get()) & KU_KEY_CERT_SIGN) == 0) {
        return absl::FailedPreconditionError(
            StrCat(Describe(*key),
                   " offers templates but its certificate is not a CA certificate with "
                   "keyCertSign"));
      }
      // Certificates are signed with the alias's first configured algorithm.
      const AlgorithmInfo& first = Info(key->algorithms.front());
      pki::SignatureOptions options;
      options.digest = first.digest;
      options.rsa_pss = first.scheme == Scheme::kRsaPss;
      ossl::UniquePtr<X509> cert(X509_dup(key->certificate.get()));
      EVP_PKEY_up_ref(key->pkey.get());
      ossl::UniquePtr<EVP_PKEY> issuing_key(key->pkey.get());
      auto issuer = Issuer::Create(signer->crypto_->libctx(), hsm::kTokenKeyProperties,
                                   std::move(cert), std::move(issuing_key), options);
      if (!issuer.ok()) {
        return absl::Status(issuer.status().code(),
                            StrCat(Describe(*key), ": ", issuer.status().message()));
      }
      // Issued under this CA's own certificate: the CA's CRL and
      // certificate are what relying parties need, so [publication]'s URLs
      // go in. Under another issuer they would send verifiers to a CRL
      // that is not its issuer's, so none go in (DECISIONS.md).
      key->under_this_ca = IsThisCasCertificate(this_ca.get(), key->certificate.get());
      if (key->under_this_ca) {
        auto publication = PublicationExtensions(config.publication);
        if (!publication.ok()) return publication.status();
        (*issuer)->SetPublicationExtensions(std::move(*publication));
      }
      key->issuer = std::move(*issuer);
    }
    signer->keys_.push_back(std::move(key));
  }
  // Keep only the tokens the keys are on.
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i >= already_open || used[i]) signer->tokens_.push_back(tokens[i]);
  }
  // SignDigests helpers: with the calling thread, one per core ([server]
  // threads when set). Idle unless a batch is being signed.
  if (!signer->keys_.empty()) {
    const size_t cores =
        config.server.threads > 0 ? static_cast<size_t>(config.server.threads) : pki::UsableCores();
    for (size_t i = 1; i < cores; ++i) {
      signer->helpers_.emplace_back([s = signer.get()] { s->HelperLoop(); });
    }
  }
  return signer;
}

DelegatedSigner::~DelegatedSigner() {
  Stop();
}

void DelegatedSigner::PostHelpers(size_t n, const std::function<void()>& task) {
  {
    std::lock_guard<std::mutex> lock(helpers_mu_);
    if (helpers_stopping_) return;
    n = std::min(n, helpers_.size());
    for (size_t i = 0; i < n; ++i) helper_tasks_.push_back(task);
  }
  for (size_t i = 0; i < n; ++i) helpers_cv_.notify_one();
}

void DelegatedSigner::HelperLoop() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(helpers_mu_);
      helpers_cv_.wait(lock, [this] { return helpers_stopping_ || !helper_tasks_.empty(); });
      if (helpers_stopping_) return;
      task = std::move(helper_tasks_.back());
      helper_tasks_.pop_back();
    }
    task();
  }
}

const SigningKey* DelegatedSigner::Find(std::string_view alias) const {
  for (const auto& k : keys_) {
    if (k->alias == alias) return k.get();
  }
  return nullptr;
}

absl::Status DelegatedSigner::Refuse(const std::string& principal, std::string_view rpc,
                                     std::string_view alias, absl::Status refusal,
                                     std::optional<Algorithm> algorithm) {
  if (!audit_) return refusal;
  // The key is a bounded set: an unknown alias (the client's free input)
  // counts as one.
  const auto hr = HResultOf(refusal);
  const std::string key =
      StrCat(principal, "\n", rpc, "\n", Find(alias) != nullptr ? alias : std::string_view("?"),
             "\n", hr.value_or(0), "\n", algorithm ? static_cast<int>(*algorithm) : -1);
  const int64_t refused = refusals_.Take(key);
  if (refused == 0) return refusal;
  json details{{"rpc", std::string(rpc)},
               {"alias", Echo(alias)},
               {"reason", Echo(std::string(refusal.message()), 512)},
               {"refused_calls", refused}};
  if (hr) details["hresult"] = *hr;
  audit_(principal, "signing.refused", details.dump());
  return refusal;
}

absl::StatusOr<const SigningKey*> DelegatedSigner::KeyFor(const std::string& principal,
                                                          std::string_view alias,
                                                          std::string_view rpc) {
  const SigningKey* key = Find(alias);
  if (key == nullptr) {
    return Refuse(
        principal, rpc, alias,
        Error(hresult::kBadKeyset, StrCat("no signing key has the alias \"", Echo(alias), "\"")));
  }
  if (key->PrincipalIndex(principal) < 0) {
    return Refuse(principal, rpc, alias,
                  Error(hresult::kAccessDenied,
                        StrCat(principal, " may not use signing key \"", alias, "\"")));
  }
  return key;
}

absl::Status DelegatedSigner::CheckSign(const std::string& principal, std::string_view rpc,
                                        std::string_view alias, std::optional<Algorithm> algorithm,
                                        std::optional<int> pss_salt_length, const SigningKey** key,
                                        int* principal_index, int* salt) {
  auto found = KeyFor(principal, alias, rpc);
  if (!found.ok()) return found.status();
  const SigningKey* k = *found;
  if (k->ca_key) {
    return Refuse(principal, rpc, alias,
                  Error(hresult::kAccessDenied,
                        StrCat("signing key \"", alias,
                               "\" is this CA's own key: it signs only the certificates this CA "
                               "issues and records (IssueCertificate), never a caller's digest "
                               "or data")),
                  algorithm);
  }
  if (!algorithm) {
    return Refuse(
        principal, rpc, alias,
        Error(hresult::kBadAlgorithm, StrCat("no known signature algorithm given (signing key \"",
                                             alias, "\" allows: ", AllowedNames(*k), ")")));
  }
  const AlgorithmInfo& a = Info(*algorithm);
  if (!k->allowed[static_cast<size_t>(*algorithm)]) {
    return Refuse(
        principal, rpc, alias,
        Error(hresult::kBadAlgorithm, StrCat("signing key \"", alias, "\" does not allow ", a.name,
                                             " (it allows: ", AllowedNames(*k), ")")),
        *algorithm);
  }
  *salt = static_cast<int>(a.digest_size);
  if (pss_salt_length.has_value()) {
    if (a.scheme != Scheme::kRsaPss) {
      return Refuse(principal, rpc, alias,
                    Error(hresult::kInvalidArg, StrCat("a PSS salt length was given for ", a.name,
                                                       ", which is not RSA-PSS")),
                    *algorithm);
    }
    // RFC 8017 9.1.1: emLen >= hLen + sLen + 2, emLen = ceil((modBits - 1) / 8).
    const int max_salt =
        static_cast<int>((k->bits() - 1 + 7) / 8) - static_cast<int>(a.digest_size) - 2;
    if (*pss_salt_length < 0 || *pss_salt_length > max_salt) {
      return Refuse(principal, rpc, alias,
                    Error(hresult::kInvalidArg,
                          StrCat("PSS salt length ", *pss_salt_length, " is out of range for ",
                                 a.name, " with RSA-", k->bits(), " (0..", max_salt, ")")),
                    *algorithm);
    }
    *salt = *pss_salt_length;
  }
  *key = k;
  *principal_index = k->PrincipalIndex(principal);
  return absl::OkStatus();
}

absl::StatusOr<SigningKey::Contexts> DelegatedSigner::AcquireContexts(const SigningKey& key,
                                                                      const AlgorithmInfo& a) {
  SigningKey::Pool& pool = key.pools[static_cast<size_t>(a.id)];
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    if (!pool.idle.empty()) {
      SigningKey::Contexts c = pool.idle.back();
      pool.idle.pop_back();
      return c;
    }
  }
  // A new pair; it joins the pool when released.
  const EVP_MD* md = digests_[static_cast<size_t>(a.id)].get();
  SigningKey::Contexts c;
  c.sign = EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), key.pkey.get(), hsm::kTokenKeyProperties);
  bool ok = c.sign != nullptr && EVP_PKEY_sign_init(c.sign) == 1;
  if (a.scheme != Scheme::kEcdsa) {
    c.verify = EVP_PKEY_CTX_new_from_pkey(nullptr, key.token_key->public_key.get(), nullptr);
    ok = ok && c.verify != nullptr && EVP_PKEY_verify_init(c.verify) == 1;
    const int pad = a.scheme == Scheme::kRsaPss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING;
    for (EVP_PKEY_CTX* ctx : {c.sign, c.verify}) {
      ok = ok && EVP_PKEY_CTX_set_rsa_padding(ctx, pad) == 1 &&
           EVP_PKEY_CTX_set_signature_md(ctx, md) == 1;
      if (a.scheme == Scheme::kRsaPss) ok = ok && EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) == 1;
    }
  } else {
    ok = ok && EVP_PKEY_CTX_set_signature_md(c.sign, md) == 1;
  }
  if (!ok) {
    EVP_PKEY_CTX_free(c.sign);
    EVP_PKEY_CTX_free(c.verify);
    return hsm::OpenSslError(StrCat(Describe(key), ": prepare ", a.name));
  }
  return c;
}

void DelegatedSigner::ReleaseContexts(const SigningKey& key, const AlgorithmInfo& a,
                                      SigningKey::Contexts c, bool reuse) {
  if (reuse) {
    SigningKey::Pool& pool = key.pools[static_cast<size_t>(a.id)];
    std::lock_guard<std::mutex> lock(pool.mu);
    pool.idle.push_back(c);
    return;
  }
  EVP_PKEY_CTX_free(c.sign);
  EVP_PKEY_CTX_free(c.verify);
}

absl::Status DelegatedSigner::SignPrepared(const SigningKey& key, const AlgorithmInfo& a,
                                           std::span<const uint8_t> digest, int salt,
                                           std::string* signature) {
  auto contexts = AcquireContexts(key, a);
  if (!contexts.ok()) return contexts.status();
  SigningKey::Contexts c = *contexts;
  if (a.scheme == Scheme::kRsaPss && (EVP_PKEY_CTX_set_rsa_pss_saltlen(c.sign, salt) != 1 ||
                                      EVP_PKEY_CTX_set_rsa_pss_saltlen(c.verify, salt) != 1)) {
    ReleaseContexts(key, a, c, false);
    return hsm::OpenSslError(StrCat(Describe(key), ": PSS salt length ", salt));
  }
  signature->resize(key.token_key->MaxSignatureSize());
  size_t len = signature->size();
  auto* out = reinterpret_cast<unsigned char*>(signature->data());
  // No lock is held here: the provider leases a session from the token's pool.
  if (EVP_PKEY_sign(c.sign, out, &len, digest.data(), digest.size()) != 1) {
    ReleaseContexts(key, a, c, false);
    signature->clear();
    return hsm::OpenSslError(StrCat(Describe(key), ": ", a.name, " signature"),
                             absl::StatusCode::kUnavailable);
  }
  signature->resize(len);
  // An RSA signature is checked before it leaves (a faulty CRT signature
  // would reveal the key); it costs a few percent of the token's time.
  if (c.verify != nullptr &&
      EVP_PKEY_verify(c.verify, out, len, digest.data(), digest.size()) != 1) {
    ReleaseContexts(key, a, c, false);
    signature->clear();
    ERR_clear_error();
    return absl::InternalError(
        StrCat(Describe(key), ": the token made a ", a.name, " signature that does not verify"));
  }
  ReleaseContexts(key, a, c, true);
  return absl::OkStatus();
}

absl::Status DelegatedSigner::SignDigest(const std::string& principal, std::string_view alias,
                                         std::optional<Algorithm> algorithm,
                                         std::span<const uint8_t> digest,
                                         std::optional<int> pss_salt_length,
                                         std::string* signature) {
  const SigningKey* key = nullptr;
  int who = -1, salt = 0;
  if (auto st =
          CheckSign(principal, "SignDigest", alias, algorithm, pss_salt_length, &key, &who, &salt);
      !st.ok()) {
    return st;
  }
  const AlgorithmInfo& a = Info(*algorithm);
  if (digest.size() != a.digest_size) {
    return Refuse(principal, "SignDigest", alias,
                  Error(hresult::kBadLen, StrCat("a ", a.name, " digest is ", a.digest_size,
                                                 " bytes; got ", digest.size())),
                  *algorithm);
  }
  if (auto st = SignPrepared(*key, a, digest, salt, signature); !st.ok()) return st;
  key->usage[static_cast<size_t>(who) * kAlgorithmCount + static_cast<size_t>(a.id)].fetch_add(
      1, std::memory_order_relaxed);
  metrics::Add(metrics::kSignatures, {{"kind", "delegated"}});
  return absl::OkStatus();
}

absl::Status DelegatedSigner::SignDigests(const std::string& principal, std::string_view alias,
                                          std::optional<Algorithm> algorithm,
                                          std::span<const std::span<const uint8_t>> digests,
                                          std::optional<int> pss_salt_length, size_t max_digests,
                                          std::vector<std::string>* signatures) {
  constexpr std::string_view kRpc = "SignDigests";
  signatures->clear();
  const SigningKey* key = nullptr;
  int who = -1, salt = 0;
  if (auto st = CheckSign(principal, kRpc, alias, algorithm, pss_salt_length, &key, &who, &salt);
      !st.ok()) {
    return st;
  }
  const AlgorithmInfo& a = Info(*algorithm);
  if (digests.empty()) {
    return Refuse(principal, kRpc, alias, Error(hresult::kInvalidArg, "no digests to sign"),
                  *algorithm);
  }
  if (digests.size() > max_digests) {
    return Refuse(principal, kRpc, alias,
                  Error(hresult::kInvalidArg, StrCat(digests.size(), " digests in one call; the ",
                                                     "limit is ", max_digests)),
                  *algorithm);
  }
  for (size_t i = 0; i < digests.size(); ++i) {
    if (digests[i].size() != a.digest_size) {
      return Refuse(
          principal, kRpc, alias,
          Error(hresult::kBadLen, StrCat("digests[", i, "]: a ", a.name, " digest is ",
                                         a.digest_size, " bytes; got ", digests[i].size())),
          *algorithm);
    }
  }

  // Every thread that joins takes the next digest until none is left; the
  // caller does not return before each taken digest is done, and a helper
  // that comes late takes none (it touches only the shared counters).
  struct Batch {
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::condition_variable cv;
    size_t done = 0;
    absl::Status error;
  };
  const size_t n = digests.size();
  signatures->assign(n, std::string());
  auto batch = std::make_shared<Batch>();
  const AlgorithmInfo* info = &a;
  std::string* out = signatures->data();
  auto run = [this, batch, key, info, salt, digests, out, n] {
    for (;;) {
      const size_t i = batch->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return;
      absl::Status st;
      if (!batch->failed.load(std::memory_order_relaxed)) {
        st = SignPrepared(*key, *info, digests[i], salt, &out[i]);
        if (!st.ok()) batch->failed = true;
      }
      std::lock_guard<std::mutex> lock(batch->mu);
      if (!st.ok() && batch->error.ok()) batch->error = st;
      if (++batch->done == n) batch->cv.notify_all();
    }
  };
  if (n > 1) PostHelpers(n - 1, run);
  run();
  {
    std::unique_lock<std::mutex> lock(batch->mu);
    batch->cv.wait(lock, [&] { return batch->done == n; });
  }
  if (!batch->error.ok()) {
    signatures->clear();
    return batch->error;
  }
  key->usage[static_cast<size_t>(who) * kAlgorithmCount + static_cast<size_t>(a.id)].fetch_add(
      n, std::memory_order_relaxed);
  metrics::Add(metrics::kSignatures, {{"kind", "delegated"}}, static_cast<double>(n));
  return absl::OkStatus();
}

absl::Status DelegatedSigner::SignData(const std::string& principal, std::string_view alias,
                                       std::optional<Algorithm> algorithm,
                                       std::span<const uint8_t> data,
                                       std::optional<int> pss_salt_length, std::string* signature) {
  const SigningKey* key = nullptr;
  int who = -1, salt = 0;
  if (auto st =
          CheckSign(principal, "SignData", alias, algorithm, pss_salt_length, &key, &who, &salt);
      !st.ok()) {
    return st;
  }
  const AlgorithmInfo& a = Info(*algorithm);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &digest_len,
                 digests_[static_cast<size_t>(a.id)].get(), nullptr) != 1) {
    return hsm::OpenSslError(StrCat("hash data for ", a.name));
  }
  if (auto st = SignPrepared(*key, a, {digest, digest_len}, salt, signature); !st.ok()) return st;
  key->usage[static_cast<size_t>(who) * kAlgorithmCount + static_cast<size_t>(a.id)].fetch_add(
      1, std::memory_order_relaxed);
  metrics::Add(metrics::kSignatures, {{"kind", "delegated"}});
  return absl::OkStatus();
}

absl::StatusOr<IssuedCertificate> DelegatedSigner::IssueCertificate(
    const std::string& principal, std::string_view alias, const std::string& template_name,
    std::span<const uint8_t> request, const std::string& subject) {
  constexpr std::string_view kRpc = "IssueCertificate";
  auto found = KeyFor(principal, alias, kRpc);
  if (!found.ok()) return found.status();
  const SigningKey& key = **found;
  auto refuse = [&](const absl::Status& why) { return Refuse(principal, kRpc, alias, why); };

  const TemplateConfig* t = config_->FindTemplate(template_name);
  if (t == nullptr ||
      std::find(key.templates.begin(), key.templates.end(), t->name) == key.templates.end()) {
    return refuse(Error(
        hresult::kUnsupportedCertType,
        StrCat("template \"", template_name, "\" is not offered through signing key \"", alias,
               "\" (offered: ", key.templates.empty() ? "none" : StrJoin(key.templates, ", "),
               ")")));
  }
  if (request.empty()) return refuse(Error(hresult::kInvalidArg, "the request is empty"));
  if (request.size() > kMaxRequestSize) {
    return refuse(Error(hresult::kInvalidArg, StrCat("the request is ", request.size(),
                                                     " bytes; the limit is ", kMaxRequestSize)));
  }
  auto parsed = pki::ParsePkcs10(request);
  if (!parsed.ok()) return refuse(RequestCheckError(parsed.status()));
  EVP_PKEY* pub = parsed->public_key();
  std::string key_type;
  if (!KeyTypeAllowed(*t, pub, &key_type)) {
    return refuse(Error(hresult::kKeyLength,
                        StrCat("template ", t->name, " does not accept ", key_type, " keys")));
  }
  if (EVP_PKEY_get_bits(pub) < t->min_key_bits) {
    return refuse(Error(hresult::kKeyLength, StrCat(EVP_PKEY_get_bits(pub), "-bit key; template ",
                                                    t->name, " needs at least ", t->min_key_bits)));
  }
  ossl::UniquePtr<X509_NAME> name;
  if (!subject.empty()) {
    auto given = pki::ParseName(subject);
    if (!given.ok()) {
      return refuse(Error(hresult::kBadRequestSubject,
                          StrCat("subject \"", subject, "\": ", given.status().message())));
    }
    name = std::move(*given);
  } else {
    name.reset(X509_NAME_dup(X509_REQ_get_subject_name(parsed->req.get())));
  }
  if (!name || X509_NAME_entry_count(name.get()) == 0) {
    return refuse(
        Error(hresult::kBadRequestSubject, "the request has no subject and the call gives none"));
  }
  // The alias's CA may be a client CA too: it never names a principal for a
  // signer (roles as configured for the signer's subject).
  if (auto st = CheckSubjectNamesNoPrincipal(*config_, pki::FormatName(name.get()), principal,
                                             config_->RolesOf(principal));
      !st.ok()) {
    return refuse(st);
  }
  if (key_owner_check_) {
    if (auto st = key_owner_check_(parsed->spki_sha256(), pki::FormatName(name.get()), principal);
        !st.ok()) {
      if (!HResultOf(st)) return st;  // the CA database, not the request
      return refuse(st);
    }
  }
  // The template's subjectAltName, template extension and S/MIME
  // capabilities; account names only those of the certificate's subject.
  auto extensions = TemplateExtensions(*config_, *t, parsed->req.get(), pki::FormatName(name.get()),
                                       config_->RolesOf(principal));
  if (!extensions.ok()) return refuse(extensions.status());

  const int64_t now = clock_();
  CertificateSpec spec;
  spec.subject = name.get();
  spec.public_key = pub;
  spec.spki = X509_REQ_get_X509_PUBKEY(parsed->req.get());
  spec.not_before = now - 60;
  spec.not_after = now + t->validity.count();
  spec.key_usage = t->key_usage;
  spec.extended_key_usage = t->extended_key_usage;
  spec.extensions = std::move(*extensions);
  if (key.under_this_ca && !recorder_) {
    // Fail closed: never a certificate of this CA that its database does not hold.
    return absl::FailedPreconditionError(
        StrCat(Describe(key),
               " issues under this CA's certificate and nothing records what it "
               "issues in the CA database"));
  }
  auto cert = key.issuer->IssueCertificate(spec);
  if (!cert.ok()) return cert.status();

  IssuedCertificate out;
  out.serial = SerialHex(cert->get());
  out.chain.push_back(pki::CertificateDer(key.certificate.get()));
  for (const auto& c : key.chain) out.chain.push_back(pki::CertificateDer(c.get()));
  const std::string details = json{
      {"alias", std::string(alias)},
      {"template", t->name},
      {"serial", out.serial},
      {"subject", pki::FormatName(X509_get_subject_name(cert->get()))},
      {"sha1", pki::Sha1Thumbprint(
                   cert->get())}}.dump();
  if (key.under_this_ca) {
    // Recorded (revocable, on the CRL, in the one-key-one-owner check)
    // with its audit record before it leaves; unrecorded, it never does.
    if (auto st = recorder_(Issuance{principal, alias, t->name, request, cert->get(), details});
        !st.ok()) {
      if (!HResultOf(st)) return st;  // the CA database, not the request
      return refuse(st);
    }
  } else if (audit_) {
    audit_(principal, "signing.certificate_issued", details);
  }
  out.certificate = std::move(*cert);
  return out;
}

void DelegatedSigner::FlushUsage() {
  std::lock_guard<std::mutex> lock(flush_mu_);
  const int64_t now = clock_();
  const int64_t since = usage_since_;
  usage_since_ = now;
  for (const auto& key : keys_) {
    for (size_t p = 0; p < key->principals.size(); ++p) {
      uint64_t total = 0;
      json by_algorithm = json::object();
      for (size_t a = 0; a < kAlgorithmCount; ++a) {
        const uint64_t n =
            key->usage[p * kAlgorithmCount + a].exchange(0, std::memory_order_relaxed);
        if (n == 0) continue;
        total += n;
        by_algorithm[kAlgorithms[a].name] = n;
      }
      if (total == 0 || !audit_) continue;
      audit_(key->principals[p], "signing.usage",
             json{{"alias", key->alias},
                  {"signatures", total},
                  {"algorithms", by_algorithm},
                  {"from", since},
                  {"to", now}}
                 .dump());
    }
  }
}

void DelegatedSigner::StartPeriodicFlush(std::chrono::seconds interval) {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (flusher_.joinable() || stopping_) return;
  flusher_ = std::thread([this, interval] {
    std::unique_lock<std::mutex> guard(stop_mu_);
    while (!stop_cv_.wait_for(guard, interval, [this] { return stopping_; })) {
      guard.unlock();
      FlushUsage();
      guard.lock();
    }
  });
}

void DelegatedSigner::Stop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  // A batch still running finishes on its caller's thread.
  {
    std::lock_guard<std::mutex> lock(helpers_mu_);
    helpers_stopping_ = true;
    helper_tasks_.clear();
  }
  helpers_cv_.notify_all();
  for (auto& t : helpers_) {
    if (t.joinable()) t.join();
  }
  FlushUsage();
}

}  // namespace keywarden::service::signing
