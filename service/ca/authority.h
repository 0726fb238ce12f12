// The certification authority: the domain logic behind every RPC, usable
// without gRPC. Handlers authorize, call one method here, and map the
// result; everything security-relevant is audited here.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/provider/provider.h"
#include "hsm/token.h"
#include "pki/cmc.h"
#include "pki/pkcs10.h"
#include "service/archival/archiver.h"
#include "service/archival/kra_registry.h"
#include "service/bounded.h"
#include "service/ca/exchange.h"
#include "service/ca/issuer.h"
#include "service/config.h"
#include "service/storage/audit_checkpoints.h"
#include "service/storage/store.h"
#include "service/trust/client_trust.h"

namespace keywarden::service {

struct EnrollmentOutcome {
  RequestRecord request;
  std::optional<CertificateRecord> certificate;
  // For CMC requests: the CMC Full PKI Response signed by the CA.
  std::vector<uint8_t> cmc_response;
};

// A request as the CA sees it: the PKCS#10 (from a bare request or from
// inside a CMC one) and, for archival, the encrypted private key.
struct ParsedRequest {
  pki::Pkcs10Request pkcs10;
  int64_t body_part_id = 1;  // the PKCS#10's bodyPartID in a CMC request
  std::optional<std::vector<uint8_t>> encrypted_key;
  std::optional<std::vector<uint8_t>> encrypted_key_hash;
  // CMC with an encrypted key: the request without it (what is stored).
  std::vector<uint8_t> without_encrypted_key;
};
// `format` is "pkcs10" or "cmc"; signatures and hashes are verified.
// `stored`: the CA's own stored copy, whose encrypted key was removed.
// `seen` (CMC only) receives what was read safely when parsing fails.
absl::StatusOr<ParsedRequest> ParseRequest(const std::string& format, std::span<const uint8_t> der,
                                           bool stored = false, pki::CmcSeen* seen = nullptr);

// Who submits a request, as the door identified them (service/trust).
struct Requester {
  std::string principal;
  std::vector<Role> roles;
  bool Has(Role r) const { return std::find(roles.begin(), roles.end(), r) != roles.end(); }
};

struct CrlInfo {
  std::vector<uint8_t> der;
  int64_t number = 0;
  int64_t this_update = 0;
  int64_t next_update = 0;
};

class CertificateAuthority {
 public:
  using Clock = std::function<int64_t()>;

  // Opens the CA: loads its certificate (and chain) from the configured
  // files, finds the signing key on the token and checks that they match,
  // loads or makes the exchange certificate, and publishes a CRL if none is
  // current. A CA without a valid certificate does not start.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Open(
      const Config& config, Store& store, std::shared_ptr<hsm::CryptoContext> crypto,
      std::shared_ptr<hsm::Token> token, Clock clock);

  const Config& config() const { return config_; }
  // Client certificates at the door: identity, roles and revocation. This
  // CA's own revocations reach it at every revoke and CRL publication.
  ClientTrust& trust() { return *trust_; }
  Store& store() { return store_; }
  X509* certificate() const { return issuer_->ca_certificate(); }
  // DER of the CA certificate followed by its configured chain.
  std::vector<std::vector<uint8_t>> ChainDer() const;

  // At start: requests left between states by a crash (still marked in
  // process) are failed with reason "interrupted" (the client may submit
  // again) and audited (request.interrupted). Requests taken under
  // submission stay pending. Only requests submitted before
  // `submitted_before` count: with several replicas on one database,
  // another one may be processing a younger request right now. A request
  // another replica resolves meanwhile is left alone. Returns how many were
  // resolved.
  absl::StatusOr<int> ResolveInterrupted(int64_t submitted_before);

  // Policy first checks who may enrol for the template (`enrollees`,
  // CERTSRV_E_TEMPLATE_DENIED) and refuses a certificate that would name a
  // configured principal unless a CA Administrator asks (or the principal
  // itself, when that gains it no role). Both are audited.
  absl::StatusOr<EnrollmentOutcome> Submit(const Requester& requester,
                                           std::span<const uint8_t> request,
                                           const std::string& template_hint);
  absl::StatusOr<EnrollmentOutcome> Retrieve(const std::string& principal, int64_t request_id,
                                             bool any_requester);
  absl::StatusOr<EnrollmentOutcome> Approve(const std::string& officer, int64_t request_id);
  absl::StatusOr<RequestRecord> Deny(const std::string& officer, int64_t request_id,
                                     const std::string& reason);
  absl::StatusOr<CertificateRecord> Revoke(const std::string& officer, const std::string& serial,
                                           int reason);
  // Releases a certificateHold (certutil -revoke SERIAL Unrevoke): the
  // certificate is valid again, the door lets its holder in again, and a
  // new CRL (without it) is published at once. Only a hold can be released
  // (CERTSRV_E_BAD_REQUESTSTATUS naming the reason otherwise); NOT_FOUND
  // (CRYPT_E_NOT_FOUND) for a serial this CA did not issue. The release
  // and its audit record (certificate.hold_released) are one transaction.
  absl::StatusOr<CertificateRecord> ReleaseHold(const std::string& officer,
                                                const std::string& serial);

  // The current CRL: the newest one in the store (another replica's
  // included, looked up at most once a second), re-issued at half-life by
  // the one replica that takes the store lease "crl"; a replica that does
  // not get it serves the newest stored one while it is valid.
  absl::StatusOr<CrlInfo> CurrentCrl();
  // Issues a CRL now, under the lease "crl" (waiting up to 30 s for it).
  absl::StatusOr<CrlInfo> PublishCrl(const std::string& who);
  // Takes over a CRL another replica published, and the revocations behind
  // it, when there is one (looks at most once a second; called before each
  // client's revocation check, so a certificate revoked through another
  // replica is refused here within a second). A store fault is logged.
  void TakeOverReplicaRevocations();

  absl::StatusOr<ExchangeCertificate> CurrentExchange() { return exchange_->Current(); }
  absl::StatusOr<ExchangeCertificate> RenewExchange(const std::string& who);
  std::vector<ExchangeCertificate> ExchangeCertificates() const { return exchange_->Unexpired(); }

  // Key Recovery Agents: their status, and re-validation (files, CRLs and
  // the database are read again).
  std::vector<KraStatus> KraStatuses() const { return kras_->Status(); }
  size_t KrasPerArchival() const { return kras_->per_archival(); }
  absl::Status KraUsable() const { return kras_->Usable(); }
  // The archival self-test (seed: events 86/88; KeyArchiver::RunSelfTest):
  // run at start and after a token outage is recovered (`when` says which).
  // A failure is logged (the event 86 line, with the failed mechanisms and
  // their CKR values) and audited (archival.selftest_failed); a pass after
  // a failure is audited too (archival.selftest_passed). From then on, and
  // until a run passes, every archival is refused with 0x80090019.
  void RunArchivalSelfTest(const std::string& when);
  // OK, or the refusal archival gets now (ArchivalSelfTestRefusal).
  absl::Status ArchivalSelfTestRefusal() const;
  // True when a template archives keys (archival allowed or required).
  bool ArchivalConfigured() const;
  std::vector<KraStatus> ReloadKras(const std::string& who);

  // What the CA reloads at run time (SIGHUP): the KRA certificates and their
  // CRLs. One line per item, in `reloaded` or, with the reason, in `failed`.
  struct RuntimeReload {
    std::vector<std::string> reloaded;
    std::vector<std::string> failed;
  };
  RuntimeReload ReloadRuntime(const std::string& who);

  // Manual archival (certutil -importKMS): archives the keys of a PKCS#12
  // for certificates this CA issued, or, with KRAF_ENABLEFOREIGN and
  // `foreign`, for another CA's certificates (recorded as new, issued rows).
  // RC2/3DES files (Windows XP/2003 exports) are read too (pki::ReadPkcs12).
  // Every key with its certificate is tried; the first archived one fills
  // the top fields and `keys` reports each. When none is archived the
  // result is the first key's error, so a one-key file answers as before.
  struct ImportedKey {
    std::string subject;
    std::string serial;
    int64_t request_id = 0;
    std::vector<std::string> kra_sha1;
    bool foreign = false;
    bool signature_only = false;  // ignored: a signature certificate
    absl::Status status;          // not OK: this key was not archived
  };
  struct ImportResult {
    int64_t request_id = 0;
    std::string serial;
    std::vector<std::string> kra_sha1;
    bool foreign = false;
    std::vector<ImportedKey> keys;
  };
  absl::StatusOr<ImportResult> ImportKey(const std::string& who, std::span<const uint8_t> pfx,
                                         const hsm::SecretString& password, bool foreign);

  // Key recovery (certutil -getkey), for Certificate Managers. A search
  // token is a serial number (spaces and colons allowed), a SHA-1
  // thumbprint, a request id, a CN, a subject, a UPN or e-mail name, or
  // DOMAIN\user; every reading of it is tried, each exactly (no substring,
  // no case folding). user@domain and DOMAIN\user are looked up in the
  // directory ([[account]]): the account's certificates are those with its
  // subject, UPN or e-mail. Only certificates with an archived key are
  // candidates. `tried` (if given) gets one line per reading that found
  // nothing, to say what was searched when nothing matches.
  struct RecoveryCandidate {
    CertificateRecord certificate;
    RequestRecord request;  // with its archived key (envelope, KRA hashes)
  };
  absl::StatusOr<std::vector<RecoveryCandidate>> FindArchivedKeys(
      const std::string& search, std::vector<std::string>* tried = nullptr);
  // The recovery blob of the one match (0x8002802c with the candidates when
  // several match, 0x80092004 when none does or a KRA certificate is
  // missing): a CMS SignedData by the CA key around the stored archive.
  // Audited with the request id and the principal.
  struct RecoveryBlobResult {
    RecoveryCandidate candidate;
    std::vector<uint8_t> blob;
  };
  // `history_version` > 0: the blob wraps that earlier envelope of the
  // archive history (0x80092004 if there is none) for its old KRAs.
  absl::StatusOr<RecoveryBlobResult> GetRecoveryBlob(const std::string& who,
                                                     const std::string& search,
                                                     int64_t history_version = 0);
  // KRA rollover (service/ca/rewrap.cc; keywarden kra rewrap). The KRAs an
  // archive may be rewrapped to: every KRA of this CA valid now.
  KraSelection RewrapTargets() { return kras_->Valid(); }
  // The form a rewrap must take: [kra] threshold (1: key-transport
  // recipients; k >= 2: a threshold split with that k).
  int RewrapThreshold() const { return config_.kra.threshold; }
  // Replaces the recipients of request `request_id`'s archive with those of
  // `envelope`, which must be the stored archive (its SHA-256 is
  // `previous_sha256`) with the encryptedContentInfo byte for byte and
  // every recipient a KRA valid now (at least [kra] count of them, each
  // once, with the archive's key transport). The old envelope goes to the
  // archive history; the rewrap, or the refusal, is audited. Threshold
  // archives are refused (not done).
  struct RewrapResult {
    int64_t request_id = 0;
    std::vector<std::string> previous_kra_sha1;
    std::vector<std::string> kra_sha1;
    int64_t history_version = 0;
    std::string scheme;  // of the new envelope ("...-threshold-KofN" for a threshold split)
  };
  absl::StatusOr<RewrapResult> RewrapArchivedKey(const std::string& who, int64_t request_id,
                                                 const std::vector<uint8_t>& previous_sha256,
                                                 const std::vector<uint8_t>& envelope);
  // One line per candidate, as certutil -getkey lists them.
  static std::string DescribeCandidate(const RecoveryCandidate& c);

  // Signed audit checkpoints (service/ca/audit_checkpoint.cc). Signs the
  // head of the audit chain with the CA key when records were appended
  // since the newest checkpoint (verified before it is stored) and returns
  // the newest checkpoint; NOT_FOUND while the log is empty.
  absl::StatusOr<StoredCheckpoint> CheckpointAudit();
  // The audit log against its checkpoints and this CA's certificate.
  absl::StatusOr<AuditVerdict> VerifyAudit(const std::optional<std::vector<uint8_t>>& held);

  // One key, one owner (CRYPT_E_EXISTS, ALREADY_EXISTS): a public key
  // (`spki_sha256`, pki::SpkiSha256) is certified by this CA to one owner
  // only -- one subject and, for requests, one requester. Refused when the
  // key is one of the CA's own, is certified to another subject or for
  // another requester, or is held by a pending archival request of another
  // requester; the message names the existing certificate's serial (or the
  // request). `requester` empty compares subjects only (importpfx: the
  // certificate's subject is its owner). `archiving`: the request carries
  // the private key; the same owner sending a key that is already archived
  // is refused as a replay (its own message). The same owner without
  // archival is a renewal with the same key: allowed, and the earlier
  // certificate's serial goes to `same_key_as`. `exclude_request` and
  // `exclude_serial` are the rows under processing.
  absl::Status CheckKeyOwner(const std::string& spki_sha256, const std::string& subject,
                             const std::string& requester, bool archiving,
                             int64_t exclude_request = 0, const std::string& exclude_serial = {},
                             std::string* same_key_as = nullptr);
  // The same check inside a unit of work (read through `t`): run again in
  // the transaction that issues, after locking "key:<hash>", so two
  // submissions of one key racing on two threads or two replicas cannot
  // both pass it.
  absl::Status CheckKeyOwnerIn(Transaction& t, const std::string& spki_sha256,
                               const std::string& subject, const std::string& requester,
                               bool archiving, int64_t exclude_request,
                               const std::string& exclude_serial, std::string* same_key_as);

  // Records a certificate a delegated signing alias issued under this CA's
  // own certificate (Signing/IssueCertificate) the way an enrolment is: a
  // request row from `principal` (the PKCS#10 `request` as received, the
  // certificate's subject, resolved by "signing:<alias>") and the
  // certificate issued for it, with the "signing.certificate_issued" audit
  // record (`audit_details` plus the request id), in one transaction after
  // the key's owner is checked again under the key's lock. So it can be
  // revoked, goes on this CA's CRL and holds its key for its owner.
  absl::Status RecordDelegatedIssuance(const std::string& principal, std::string_view alias,
                                       const std::string& template_name,
                                       std::span<const uint8_t> request, X509* certificate,
                                       const std::string& audit_details);

  // Appends to the audit log; a failure to audit is logged loudly.
  void Audit(const std::string& principal, const std::string& event,
             const std::string& details_json);
  // Appends to the audit log for an operation that must not happen
  // unaudited (fail closed): the error (UNAVAILABLE, a CA-side fault) says
  // `what` was not done, and the failure is logged loudly too.
  absl::Status AuditCommitted(const std::string& principal, const std::string& event,
                              const std::string& details_json, const std::string& what);

 private:
  // At Open, before anything is appended: the audit log must verify (chain,
  // checkpoints, triggers) unless config.audit.accept_broken, which is
  // recorded as audit.broken_accepted.
  absl::Status CheckAuditAtStart();

  CertificateAuthority(const Config& config, Store& store, Clock clock)
      : config_(config), store_(store), clock_(std::move(clock)) {}

  // Policy and issuance for a stored request (new or approved).
  // `submitted`: the request as received (with its encrypted key), when
  // processing a new submission; null when re-processing a stored one.
  // `requester`: who submitted it, when processing a new submission.
  absl::StatusOr<EnrollmentOutcome> Process(RequestRecord request, const std::string& actor,
                                            bool approving, const ParsedRequest* submitted,
                                            const Requester* requester = nullptr);
  // The CMC response for an issued or pending CMC request (empty otherwise).
  // `body_part_id` (the PKCS#10's, when the caller has the request parsed)
  // and `issued_certificate` (issued_record's certificate, when the caller
  // holds it) spare parsing the stored request and decoding the certificate.
  // A response that cannot be made or does not verify after signing is an
  // INTERNAL error: nothing unverified leaves, and no empty response either.
  absl::StatusOr<std::vector<uint8_t>> CmcResponseFor(
      const RequestRecord& request, const std::optional<CertificateRecord>& issued_record,
      std::optional<int64_t> body_part_id = std::nullopt, X509* issued_certificate = nullptr);
  absl::Status DenyWith(RequestRecord& request, const absl::Status& why, const std::string& by);
  // One key of an imported PKCS#12 with its certificate (ImportKey).
  absl::StatusOr<ImportResult> ImportOneKey(const std::string& who, ossl::UniquePtr<EVP_PKEY> key,
                                            X509* cert, bool foreign);
  // A submission refused by an integrity check (pki::RequestCheck): with
  // `make_row`, stored as a failed row with its reason and code and no key material -- no
  // request body, only the request's SHA-256 and what `seen` read safely,
  // each bounded -- and audited as request.rejected at most once a minute
  // per principal and format. Returns the refusal (its HRESULT names the
  // check, service/errors.h RequestCheckError).
  absl::Status RecordRefused(const Requester& requester, const std::string& format,
                             const std::string& template_hint, const std::string& request_sha256,
                             const pki::CmcSeen& seen, const absl::Status& why, bool make_row);
  // Resolves the request failed for a CA-side reason (token, store): never
  // a denial. Answers UNAVAILABLE.
  absl::Status FailCaSide(RequestRecord& request, const absl::Status& why);
  // Pending -> denied or failed, with `audit` in the same transaction. An
  // archived key the request holds in the database is removed with it
  // (archival.key_discarded) unless [flags] save_bad_request_key keeps it
  // (archival.key_kept; KRAF_SAVEBADREQUESTKEY).
  absl::Status ResolveUnissued(RequestRecord& request, Disposition disposition,
                               const std::string& message, uint32_t code, const std::string& by,
                               std::vector<AuditEntry> audit);

  const Config& config_;
  Store& store_;
  Clock clock_;
  std::shared_ptr<hsm::CryptoContext> crypto_;
  std::shared_ptr<hsm::Token> token_;
  std::unique_ptr<Issuer> issuer_;
  std::unique_ptr<ExchangeKeys> exchange_;
  std::unique_ptr<KraRegistry> kras_;
  std::unique_ptr<KeyArchiver> archiver_;
  std::unique_ptr<ClientTrust> trust_;
  std::vector<ossl::UniquePtr<X509>> chain_;
  // Adopts the CRL in the store ("crl.current") when it is newer than
  // crl_ (published by another replica), with the revocations behind it;
  // looks at most once a second unless `force`.
  absl::Status AdoptStoredCrlLocked(bool force);
  // The door's set of this CA's revocations becomes the database's
  // (revoked certificates and carried revocations), keeping any revocation
  // made while it was read.
  absl::Status RefreshDoorRevocations();
  absl::StatusOr<CrlInfo> PublishCrlLocked(const std::string& who);
  std::mutex crl_mu_;
  std::chrono::steady_clock::time_point crl_checked_{};
  // request.rejected: at most once a minute per principal and format.
  RefusalLimiter rejections_;
  std::optional<CrlInfo> crl_;
};

}  // namespace keywarden::service
