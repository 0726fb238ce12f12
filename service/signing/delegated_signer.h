// Delegated signing (ARCHITECTURE.md §6): named keys that other CA services
// (an issuing front end, an OCSP responder, a timestamp service) sign with,
// without gRPC in sight. The gRPC handlers (server/signing_service.cc)
// check the Signer role, translate, and call one method here.
//
// The hot path (SignDigest/SignData) holds no lock while the token works:
// each key keeps prepared EVP_PKEY_CTXs per algorithm in a small free list
// (a lock only to pop and push), the token session comes from the token's
// bounded pool inside the provider, and the signature is written straight
// into the caller's buffer. Usage is counted per key, principal and
// algorithm in atomics and written to the audit log by FlushUsage (every
// [signing] audit_interval and at shutdown), not once per signature; every
// refusal is audited when it happens.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/keys.h"
#include "hsm/ossl.h"
#include "hsm/provider/provider.h"
#include "hsm/token.h"
#include "service/bounded.h"
#include "service/ca/issuer.h"
#include "service/config.h"
#include "service/signing/algorithm.h"

namespace keywarden::service::signing {

// One [[signing.keys]] entry, opened. Read-only outside DelegatedSigner.
struct SigningKey {
  std::string alias;
  std::shared_ptr<hsm::TokenKey> token_key;  // software public key in token_key->public_key
  ossl::UniquePtr<EVP_PKEY> pkey;            // the token key through keywarden's provider
  std::array<bool, kAlgorithmCount> allowed{};
  std::vector<Algorithm> algorithms;  // as configured, in order
  std::vector<std::string> principals;
  std::vector<std::string> templates;  // canonical template names
  ossl::UniquePtr<X509> certificate;   // may be null
  std::vector<ossl::UniquePtr<X509>> chain;
  std::unique_ptr<Issuer> issuer;  // when templates is not empty
  // The alias's certificate is this CA's ([ca] certificate): what it issues
  // is this CA's certificate, recorded in its database.
  bool under_this_ca = false;
  // The key is this CA's own signing key (the public key of [ca]
  // certificate): it signs only certificates issued through templates and
  // recorded, never a caller's digest or data.
  bool ca_key = false;
  std::vector<uint8_t> public_key_der;  // SubjectPublicKeyInfo

  hsm::KeyType type() const { return token_key->type; }
  size_t bits() const { return token_key->bits; }
  // Index of `principal` in `principals`, or -1.
  int PrincipalIndex(std::string_view principal) const;

  // Prepared contexts: `sign` through the provider (token), `verify` in
  // software (RSA signatures are checked before they leave the daemon).
  struct Contexts {
    EVP_PKEY_CTX* sign = nullptr;
    EVP_PKEY_CTX* verify = nullptr;
  };
  struct Pool {
    std::mutex mu;
    std::vector<Contexts> idle;
  };
  // Mutable: signing changes these, nothing else about the key.
  mutable std::array<Pool, kAlgorithmCount> pools;
  // Signatures since the last flush: principals.size() x kAlgorithmCount.
  std::unique_ptr<std::atomic<uint64_t>[]> usage;

  SigningKey() = default;
  SigningKey(const SigningKey&) = delete;
  SigningKey& operator=(const SigningKey&) = delete;
  ~SigningKey();
};

struct IssuedCertificate {
  ossl::UniquePtr<X509> certificate;
  std::vector<std::vector<uint8_t>> chain;  // DER: the alias certificate, then its chain
  std::string serial;                       // hex
};

class DelegatedSigner {
 public:
  // (principal, event, details JSON) -> the audit log.
  using AuditSink = std::function<void(const std::string&, const std::string&, const std::string&)>;
  using Clock = std::function<int64_t()>;

  // Opens every [[signing.keys]] entry. A key's token is one of `open_tokens`
  // (the CA token, already logged in) when it is the same token of the same
  // module; otherwise it is opened with [hsm] max_sessions and logged in with
  // the key's pin_source (or its URI's pin-source), and shared by later keys
  // on it. Refuses to start on anything it cannot use: a missing key or
  // token, an algorithm the key type cannot do, a certificate that is not the
  // key's, templates without a CA certificate to issue under.
  static absl::StatusOr<std::unique_ptr<DelegatedSigner>> Open(
      const Config& config, std::shared_ptr<hsm::CryptoContext> crypto,
      std::vector<std::shared_ptr<hsm::Token>> open_tokens, AuditSink audit, Clock clock);
  ~DelegatedSigner();  // stops the periodic flush and flushes once more

  const std::vector<std::unique_ptr<SigningKey>>& keys() const { return keys_; }
  const SigningKey* Find(std::string_view alias) const;
  // Tokens the signer uses (the CA token first when a key is on it).
  const std::vector<std::shared_ptr<hsm::Token>>& tokens() const { return tokens_; }

  // The key `alias`, if `principal` may use it; refusals audited with `rpc`.
  absl::StatusOr<const SigningKey*> KeyFor(const std::string& principal, std::string_view alias,
                                           std::string_view rpc);

  // Signs a digest (its length must be the algorithm's hash length) or data
  // (hashed here). `pss_salt_length` is for RSA-PSS only (default: the hash
  // length). On success `signature` holds the signature (RSA: key-size bytes;
  // ECDSA: DER). Refusals: unknown alias (NTE_BAD_KEYSET), principal not
  // allowed (E_ACCESSDENIED), algorithm not allowed (NTE_BAD_ALGID), digest
  // of the wrong length (NTE_BAD_LEN), bad salt length (E_INVALIDARG).
  absl::Status SignDigest(const std::string& principal, std::string_view alias,
                          std::optional<Algorithm> algorithm, std::span<const uint8_t> digest,
                          std::optional<int> pss_salt_length, std::string* signature);
  // Many digests with one key, algorithm and salt length: (*signatures)[i]
  // signs digests[i]. All or nothing: the count (1..max_digests), the
  // policy and every digest's length are checked before anything is signed
  // (a refusal names the first bad digest, "digests[i]"); the digests are
  // then signed in parallel, this thread and the batch helpers (one per
  // core less one) each taking the next unsigned digest, every signature
  // verified as SignDigest's; a failure returns no signature. Each returned
  // signature is counted in the usage records.
  absl::Status SignDigests(const std::string& principal, std::string_view alias,
                           std::optional<Algorithm> algorithm,
                           std::span<const std::span<const uint8_t>> digests,
                           std::optional<int> pss_salt_length, size_t max_digests,
                           std::vector<std::string>* signatures);
  absl::Status SignData(const std::string& principal, std::string_view alias,
                        std::optional<Algorithm> algorithm, std::span<const uint8_t> data,
                        std::optional<int> pss_salt_length, std::string* signature);

  // A certificate from a PKCS#10 request under one of the alias's
  // templates, issued by the alias's certificate. `subject` (RFC 4514)
  // replaces the request's subject when not empty. Audited.
  absl::StatusOr<IssuedCertificate> IssueCertificate(const std::string& principal,
                                                     std::string_view alias,
                                                     const std::string& template_name,
                                                     std::span<const uint8_t> request,
                                                     const std::string& subject);

  // One key, one owner for IssueCertificate: (SPKI SHA-256, subject,
  // principal) -> OK or the refusal (the daemon checks the CA database,
  // CertificateAuthority::CheckKeyOwner). Set once, before serving.
  using KeyOwnerCheck =
      std::function<absl::Status(const std::string&, const std::string&, const std::string&)>;
  void SetKeyOwnerCheck(KeyOwnerCheck check) { key_owner_check_ = std::move(check); }

  // A certificate IssueCertificate made under this CA's own certificate,
  // to be recorded before it leaves.
  struct Issuance {
    const std::string& principal;
    std::string_view alias;
    const std::string& template_name;
    std::span<const uint8_t> request;  // the PKCS#10 request as received
    X509* certificate;
    const std::string& audit_details;  // JSON of the signing.certificate_issued record
  };
  // Records an Issuance in the CA database with its audit record, in one
  // unit of work (the daemon: CertificateAuthority::RecordDelegatedIssuance,
  // which checks the key's owner again under the key's lock). Without one,
  // IssueCertificate refuses to issue under this CA's certificate: a
  // certificate of this CA that its database does not hold could be neither
  // revoked nor put on its CRL. Set once, before serving.
  using IssuanceRecorder = std::function<absl::Status(const Issuance&)>;
  void SetIssuanceRecorder(IssuanceRecorder recorder) { recorder_ = std::move(recorder); }

  // Writes one "signing.usage" audit record per (principal, alias) that
  // signed since the last flush, and resets the counters.
  void FlushUsage();
  // Calls FlushUsage every `interval` on a thread of its own until Stop().
  void StartPeriodicFlush(std::chrono::seconds interval);
  // Stops the periodic flush and flushes what is left.
  void Stop();

 private:
  DelegatedSigner(std::shared_ptr<hsm::CryptoContext> crypto, AuditSink audit, Clock clock)
      : crypto_(std::move(crypto)), audit_(std::move(audit)), clock_(std::move(clock)) {}

  // Audits and returns `refusal`.
  // At most once a minute per principal, RPC, configured alias (or none),
  // HRESULT and algorithm, with the count of the refusals it stands for.
  absl::Status Refuse(const std::string& principal, std::string_view rpc, std::string_view alias,
                      absl::Status refusal, std::optional<Algorithm> algorithm = std::nullopt);
  // Policy checks shared by SignDigest and SignData; on success *key and
  // *principal_index are set and *salt is the salt length to use.
  absl::Status CheckSign(const std::string& principal, std::string_view rpc, std::string_view alias,
                         std::optional<Algorithm> algorithm, std::optional<int> pss_salt_length,
                         const SigningKey** key, int* principal_index, int* salt);
  absl::Status SignPrepared(const SigningKey& key, const AlgorithmInfo& algorithm,
                            std::span<const uint8_t> digest, int salt, std::string* signature);
  absl::StatusOr<SigningKey::Contexts> AcquireContexts(const SigningKey& key,
                                                       const AlgorithmInfo& algorithm);
  void ReleaseContexts(const SigningKey& key, const AlgorithmInfo& algorithm,
                       SigningKey::Contexts contexts, bool reuse);

  // Runs `task` on up to `n` idle helper threads (none are started for it).
  void PostHelpers(size_t n, const std::function<void()>& task);
  void HelperLoop();

  std::shared_ptr<hsm::CryptoContext> crypto_;
  AuditSink audit_;
  KeyOwnerCheck key_owner_check_;
  IssuanceRecorder recorder_;
  RefusalLimiter refusals_;
  Clock clock_;
  std::vector<std::shared_ptr<hsm::Token>> tokens_;
  std::array<ossl::UniquePtr<EVP_MD>, kAlgorithmCount> digests_;  // for SignData
  std::vector<std::unique_ptr<SigningKey>> keys_;
  const Config* config_ = nullptr;

  std::mutex flush_mu_;  // one flush at a time
  int64_t usage_since_ = 0;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread flusher_;

  // Batch helpers (SignDigests): one per core less one, started by Open.
  std::mutex helpers_mu_;
  std::condition_variable helpers_cv_;
  std::vector<std::function<void()>> helper_tasks_;
  bool helpers_stopping_ = false;
  std::vector<std::thread> helpers_;
};

}  // namespace keywarden::service::signing
