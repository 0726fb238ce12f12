#include "service/ca/authority.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/cord.h"

#include "hsm/keys.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/token.h"
#include "pki/cmc.h"
#include "pki/cmc_response.h"
#include "pki/der.h"
#include "pki/files.h"
#include "pki/pkcs10.h"
#include "pki/pkcs12.h"
#include "pki/recovery_blob.h"
#include "pki/spki.h"
#include "service/authz.h"
#include "service/bounded.h"
#include "service/ca/ceremony_certificates.h"
#include "service/ca/crl_state.h"
#include "service/ca/lease.h"
#include "service/errors.h"
#include "service/observe/log.h"
#include "service/observe/metrics.h"
#include "service/storage/sql_store.h"

namespace keywarden::service {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequestSize = 256 * 1024;
constexpr const char* kCrlSetting = kCrlCurrentSetting;
// Template name of certificates from other CAs imported for key archival.
constexpr char kForeignTemplate[] = "(foreign)";

std::map<std::string, ClientTrust::Revocation> RevocationsOf(
    const std::vector<CertificateRecord>& revoked) {
  std::map<std::string, ClientTrust::Revocation> out;
  for (const auto& r : revoked) out[r.serial] = {r.revoked_at, r.revocation_reason};
  return out;
}
std::map<std::string, ClientTrust::Revocation> RevocationsOf(
    const std::vector<CarriedRevocation>& revoked) {
  std::map<std::string, ClientTrust::Revocation> out;
  for (const auto& r : revoked) out[r.serial] = {r.revoked_at, r.reason};
  return out;
}

// A template's `enrollees`: one of its roles, or the principal itself.
bool MayEnroll(const TemplateConfig& t, const Requester& who) {
  for (Role r : t.enrollee_roles) {
    if (who.Has(r)) return true;
  }
  return std::find(t.enrollee_principals.begin(), t.enrollee_principals.end(), who.principal) !=
         t.enrollee_principals.end();
}

bool KeyTypeAllowed(const TemplateConfig& t, EVP_PKEY* key, std::string* type) {
  *type = EVP_PKEY_is_a(key, "RSA") ? "rsa" : EVP_PKEY_is_a(key, "EC") ? "ec" : "other";
  return std::find(t.key_types.begin(), t.key_types.end(), *type) != t.key_types.end();
}

// The template a request is for, as stored on its row: the configured
// template's name when the hint (else the request's v2 OID, else its v1
// name) is one; else what was asked for, bounded.
std::string ResolveTemplateName(const Config& config, const std::string& hint,
                                const std::string& oid, const std::string& name) {
  const std::string& wanted = !hint.empty() ? hint : !oid.empty() ? oid : name;
  if (const TemplateConfig* t = config.FindTemplate(wanted)) return t->name;
  return Echo(wanted, 256);
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseRequest(const std::string& format, std::span<const uint8_t> der,
                                           bool stored, pki::CmcSeen* seen) {
  ParsedRequest out;
  if (format == "cmc") {
    auto cmc = pki::ParseCmcRequest(der, /*allow_removed_key=*/stored, seen);
    if (!cmc.ok()) return cmc.status();
    out.pkcs10 = std::move(cmc->pkcs10);
    out.body_part_id = cmc->pkcs10_body_part_id;
    out.encrypted_key = std::move(cmc->encrypted_key);
    out.encrypted_key_hash = std::move(cmc->encrypted_key_hash);
    out.without_encrypted_key = std::move(cmc->without_encrypted_key);
    return out;
  }
  auto pkcs10 = pki::ParsePkcs10(der);
  if (!pkcs10.ok()) return pkcs10.status();
  out.pkcs10 = std::move(*pkcs10);
  return out;
}

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Open(
    const Config& config, Store& store, std::shared_ptr<hsm::CryptoContext> crypto,
    std::shared_ptr<hsm::Token> token, Clock clock) {
  std::unique_ptr<CertificateAuthority> ca(
      new CertificateAuthority(config, store, std::move(clock)));
  ca->crypto_ = std::move(crypto);
  ca->token_ = std::move(token);

  if (config.ca.certificate.empty()) {
    return absl::FailedPreconditionError(
        "the CA has no certificate: set [ca] certificate (make one with `keywarden ceremony "
        "root`)");
  }
  auto certs = pki::ReadPemCertificates(config.ca.certificate);
  if (!certs.ok()) {
    return absl::FailedPreconditionError(StrCat("CA certificate: ", certs.status().message()));
  }
  ossl::UniquePtr<X509> ca_cert = std::move(certs->front());
  const int64_t now = ca->clock_();
  if (ToUnix(X509_get0_notBefore(ca_cert.get())) > now ||
      ToUnix(X509_get0_notAfter(ca_cert.get())) <= now) {
    return absl::FailedPreconditionError(
        StrCat("CA certificate ", config.ca.certificate, " is not within its validity period"));
  }
  if (!config.ca.chain.empty()) {
    auto chain = pki::ReadPemCertificates(config.ca.chain);
    if (!chain.ok())
      return absl::FailedPreconditionError(StrCat("CA chain: ", chain.status().message()));
    ca->chain_ = std::move(*chain);
  }

  auto uri = hsm::Pkcs11Uri::Parse(config.hsm.signing_key);
  if (!uri.ok()) return uri.status();
  auto key = hsm::FindPrivateKey(ca->token_, *uri);
  if (!key.ok()) return key.status();
  auto pkey = ca->crypto_->Load(*key);
  if (!pkey.ok()) return pkey.status();
  auto issuer = Issuer::Create(ca->crypto_->libctx(), hsm::kTokenKeyProperties, std::move(ca_cert),
                               std::move(*pkey), pki::SignatureOptions{});
  if (!issuer.ok()) return issuer.status();
  ca->issuer_ = std::move(*issuer);
  // Where relying parties find the CRL and this certificate ([publication]).
  auto publication = PublicationExtensions(config.publication);
  if (!publication.ok()) return publication.status();
  ca->issuer_->SetPublicationExtensions(std::move(*publication));
  if (auto st = ca->CheckAuditAtStart(); !st.ok()) return st;

  auto trust = ClientTrust::Load(config, ca->certificate(), ca->clock_);
  if (!trust.ok()) return trust.status();
  ca->trust_ = std::move(*trust);
  auto revoked = store.RevokedCertificates(now);
  if (!revoked.ok()) return revoked.status();
  ca->trust_->AddOwnRevocations(RevocationsOf(*revoked));
  // Revocations a restore carried over for certificates it does not hold.
  auto carried = CarriedRevocations(store);
  if (!carried.ok()) return carried.status();
  ca->trust_->AddOwnRevocations(RevocationsOf(*carried));

  CertificateAuthority* self = ca.get();
  ca->exchange_ =
      std::make_unique<ExchangeKeys>(config.exchange, ca->token_, *ca->issuer_, store, ca->clock_,
                                     [self](const std::string& event, const std::string& details) {
                                       self->Audit("system", event, details);
                                     });
  if (auto st = ca->exchange_->Load(); !st.ok()) return st;
  if (auto x = ca->exchange_->Current(); !x.ok()) return x.status();

  if (!config.ca.ceremony_transcript.empty()) {
    auto recorded =
        RecordCeremonyCertificates(config.ca.ceremony_transcript, ca->certificate(), store,
                                   [self](const std::string& event, const std::string& details) {
                                     self->Audit("system", event, details);
                                   });
    if (!recorded.ok()) return recorded.status();
  }

  std::vector<X509*> chain;
  for (const auto& c : ca->chain_) chain.push_back(c.get());
  ca->kras_ = std::make_unique<KraRegistry>(
      config.kra, store, ca->certificate(), std::move(chain), ca->clock_,
      [self](const std::string& event, const std::string& details) {
        self->Audit("system", event, details);
      });
  ca->kras_->Load("system (service start)");
  ca->archiver_ = std::make_unique<KeyArchiver>(ca->token_, ca->crypto_, *ca->exchange_, *ca->kras_,
                                                config.flags.archival_scheme, config.kra.threshold);

  if (auto saved = store.GetSetting(kCrlSetting); saved.ok()) {
    auto j = json::parse(*saved, nullptr, false);
    if (!j.is_discarded() && j.is_object()) {
      CrlInfo info;
      info.der = pki::Base64Decode(j.value("der", ""));
      info.number = j.value("number", int64_t{0});
      info.this_update = j.value("this_update", int64_t{0});
      info.next_update = j.value("next_update", int64_t{0});
      if (!info.der.empty()) ca->crl_ = std::move(info);
    }
  }
  if (auto crl = ca->CurrentCrl(); !crl.ok()) return crl.status();
  ca->Audit("system", "service.started",
            json{{"ca", config.ca.name},
                 {"sha1", pki::Sha1Thumbprint(ca->certificate())},
                 {"token", ca->token_->label()}}
                .dump());
  return ca;
}

void CertificateAuthority::RunArchivalSelfTest(const std::string& when) {
  CK_ULONG bits = 2048;
  if (auto a = hsm::ParseKeyAlgorithm(config_.exchange.key_algorithm); a.ok()) {
    bits = static_cast<CK_ULONG>(hsm::KeyAlgorithmBits(*a));
  }
  const KeyArchiver::SelfTest before = archiver_->self_test();
  const KeyArchiver::SelfTest run = archiver_->RunSelfTest(bits);
  const KeyArchiver::SelfTest now = archiver_->self_test();
  json checks = json::array();
  for (const hsm::SelfTestCheck& c : run.checks) {
    if (c.result != hsm::CheckResult::kFail || !c.required) continue;
    checks.push_back({{"check", c.name},
                      {"rv", c.rv == CKR_OK ? std::string() : hsm::RvName(c.rv)},
                      {"detail", c.detail}});
  }
  if (run.state == KeyArchiver::SelfTest::State::kPassed) {
    log::Info("archival self-test passed", json{{"token", token_->label()},
                                                {"when", when},
                                                {"scheme", config_.flags.archival_scheme},
                                                {"checks", run.checks.size()}});
    if (before.state == KeyArchiver::SelfTest::State::kFailed) {
      Audit("system", "archival.selftest_passed",
            json{{"token", token_->label()}, {"when", when}}.dump());
    }
    return;
  }
  if (now.state != KeyArchiver::SelfTest::State::kFailed) {
    // A token fault interrupted the run: the run after recovery decides.
    log::Warn("archival self-test interrupted by a token fault",
              json{{"token", token_->label()}, {"when", when}, {"failed", run.failures}});
    return;
  }
  // The seed's event 86, then what event 88 would have said: keywarden
  // never falls back to a software provider for archival.
  log::Error(
      "Certificate Services could not use the provider specified in the registry for encryption "
      "keys. The keyset is not defined. 0x80090019 (-2146893799)",
      json{{"event", 86},
           {"token", token_->label()},
           {"when", when},
           {"scheme", config_.flags.archival_scheme},
           {"failed", run.failures},
           {"checks", checks}});
  log::Warn(
      "Certificate Services did not switch to a default provider for encryption keys: key "
      "archival is refused until the token passes the archival self-test; everything else is "
      "served",
      json{{"event", 88}, {"token", token_->label()}});
  Audit("system", "archival.selftest_failed",
        json{{"token", token_->label()},
             {"when", when},
             {"scheme", config_.flags.archival_scheme},
             {"hresult", "0x80090019"},
             {"checks", checks}}
            .dump());
}

absl::Status CertificateAuthority::ArchivalSelfTestRefusal() const {
  return archiver_->SelfTestRefusal();
}

bool CertificateAuthority::ArchivalConfigured() const {
  for (const auto& t : config_.templates) {
    if (t.archival != ArchivalPolicy::kNone) return true;
  }
  return false;
}

std::vector<std::vector<uint8_t>> CertificateAuthority::ChainDer() const {
  std::vector<std::vector<uint8_t>> out{pki::CertificateDer(certificate())};
  for (const auto& c : chain_) out.push_back(pki::CertificateDer(c.get()));
  return out;
}

void CertificateAuthority::Audit(const std::string& principal, const std::string& event,
                                 const std::string& details_json) {
  auto st = store_.AppendAudit(principal, event, BoundAuditDetails(details_json), clock_());
  if (!st.ok()) {
    metrics::Add(metrics::kAuditWriteFailures);
    log::Error("AUDIT FAILURE",
               json{{"event", event}, {"error", std::string(st.status().message())}});
  }
}

absl::Status CertificateAuthority::AuditCommitted(const std::string& principal,
                                                  const std::string& event,
                                                  const std::string& details_json,
                                                  const std::string& what) {
  auto st = store_.AppendAudit(principal, event, BoundAuditDetails(details_json), clock_());
  if (st.ok()) return absl::OkStatus();
  metrics::Add(metrics::kAuditWriteFailures);
  log::Error("AUDIT FAILURE",
             json{{"event", event}, {"error", std::string(st.status().message())}});
  return absl::UnavailableError(
      StrCat(what, ": the CA could not write its audit record (", st.status().message(), ")"));
}

absl::Status CertificateAuthority::RecordDelegatedIssuance(
    const std::string& principal, std::string_view alias, const std::string& template_name,
    std::span<const uint8_t> request, X509* certificate, const std::string& audit_details) {
  const int64_t now = clock_();
  CertificateRecord record = CertificateRecordFor(certificate, 0, template_name);
  RequestRecord r;
  r.requester = principal;
  r.template_name = template_name;
  r.format = "pkcs10";
  r.raw.assign(request.begin(), request.end());
  // The certificate's subject: the call may have replaced the request's.
  r.subject = record.subject;
  r.spki_sha256 = SpkiSha256OfCertificate(record.der);  // as the store computes it
  r.request_sha256 = pki::Sha256Hex(request);
  r.disposition = Disposition::kPending;
  r.disposition_message = "Issued";
  r.submitted_at = now;
  const std::string by = StrCat("signing:", alias);
  json details = json::parse(audit_details, nullptr, /*allow_exceptions=*/false);
  if (!details.is_object()) return absl::InternalError("delegated issuance: audit details");
  absl::Status key_refusal;
  absl::Status recorded = store_.Transact(
      StrCat("recording certificate ", record.serial, " issued through signing key ", alias),
      [&](Transaction& txn) -> absl::Status {
        key_refusal = absl::OkStatus();
        if (auto st = txn.Lock(StrCat("key:", r.spki_sha256)); !st.ok()) return st;
        if (auto st = CheckKeyOwnerIn(txn, r.spki_sha256, r.subject, principal,
                                      /*archiving=*/false, 0, {}, nullptr);
            !st.ok()) {
          key_refusal = st;
          return st;
        }
        auto id = txn.InsertRequest(r);
        if (!id.ok()) return id.status();
        CertificateRecord issued = record;
        issued.request_id = *id;
        if (auto st = txn.RecordIssued(*id, issued, std::nullopt, by, now); !st.ok()) return st;
        details["request_id"] = *id;
        return txn.AppendAudit({principal, "signing.certificate_issued", details.dump()}, now)
            .status();
      });
  if (!recorded.ok() && !key_refusal.ok()) return key_refusal;
  if (recorded.ok()) metrics::Add(metrics::kSignatures, {{"kind", "certificate"}});
  return recorded;
}

absl::Status CertificateAuthority::CheckKeyOwner(const std::string& spki_sha256,
                                                 const std::string& subject,
                                                 const std::string& requester, bool archiving,
                                                 int64_t exclude_request,
                                                 const std::string& exclude_serial,
                                                 std::string* same_key_as) {
  // A read: the issuing transaction checks again under the key's lock.
  return store_.Read("checking the owner of a public key", [&](Transaction& t) {
    return CheckKeyOwnerIn(t, spki_sha256, subject, requester, archiving, exclude_request,
                           exclude_serial, same_key_as);
  });
}

absl::Status CertificateAuthority::CheckKeyOwnerIn(Transaction& t, const std::string& spki_sha256,
                                                   const std::string& subject,
                                                   const std::string& requester, bool archiving,
                                                   int64_t exclude_request,
                                                   const std::string& exclude_serial,
                                                   std::string* same_key_as) {
  if (spki_sha256.empty()) {
    return absl::InternalError("the request's public key could not be encoded to be looked up");
  }
  // One query for the kinds of holder of the key (no bodies): a key
  // certified a thousand times to its owner is one row, so the limit can
  // never hide an archived or foreign holder behind the others.
  auto certificates = t.FindKeyHolders(spki_sha256, exclude_request, exclude_serial, 100);
  if (!certificates.ok()) return certificates.status();
  for (const Transaction::KeyHolder& c : *certificates) {
    if (c.request_id == 0) {
      return Error(hresult::kKeyExists,
                   StrCat("the request's public key is the key of this CA's own certificate ",
                          c.serial, "; it is never certified to anyone else"));
    }
    const bool foreign = c.template_name == kForeignTemplate;
    // The row under processing says nothing of another owner.
    const bool other_row = c.request_id != exclude_request;
    const std::string owner_requester = other_row ? c.requester : std::string();
    const bool archived = other_row && c.archived;
    const bool same_owner =
        c.subject == subject && (requester.empty() || foreign || owner_requester == requester);
    if (!same_owner) {
      return Error(hresult::kKeyExists,
                   StrCat("the request's public key is already certified to another owner "
                          "(certificate ",
                          c.serial, ", request ", c.request_id,
                          "); a key is certified to one subject and one requester only, and is "
                          "never archived for anyone else"));
    }
    if (archiving && archived) {
      return Error(hresult::kKeyExists,
                   StrCat("replay: ", requester.empty() ? std::string("this key") : requester,
                          " already had this key certified and archived (certificate ", c.serial,
                          ", request ", c.request_id,
                          "); a key is archived once -- to renew with the same key, send the "
                          "request without the private key"));
    }
    if (same_key_as != nullptr && same_key_as->empty()) *same_key_as = c.serial;
  }
  // A pending request holding the key archived (left for a Certificate
  // Manager): nobody else may send it, and its owner only once.
  auto requests = t.FindPendingArchives(spki_sha256, exclude_request, 100);
  if (!requests.ok()) return requests.status();
  for (const Transaction::PendingArchive& r : *requests) {
    if (!requester.empty() && r.requester != requester) {
      return Error(hresult::kKeyExists,
                   StrCat("the request's public key is held by pending request ", r.request_id,
                          " of another requester; a key is never archived for anyone else"));
    }
    if (archiving) {
      return Error(hresult::kKeyExists,
                   StrCat("replay: pending request ", r.request_id, " of ", r.requester,
                          " already holds this key archived; a key is archived once"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<EnrollmentOutcome> CertificateAuthority::Submit(const Requester& requester,
                                                               std::span<const uint8_t> request,
                                                               const std::string& template_hint) {
  const std::string& principal = requester.principal;
  // Input that is not a request at all changes nothing stored.
  if (request.empty()) return Error(hresult::kInvalidArg, "the request is empty");
  if (request.size() > kMaxRequestSize) {
    return Error(hresult::kInvalidArg, StrCat("the request is ", request.size(),
                                              " bytes; the limit is ", kMaxRequestSize));
  }
  std::vector<uint8_t> der = pki::PemToDer(request);
  const std::string format = pki::SniffRequestFormat(der);
  if (format.empty()) {
    return Error(hresult::kAsn1BadTag,
                 "the request is neither a PKCS#10 request nor a CMS message");
  }
  const std::string request_sha256 = pki::Sha256Hex(der);
  pki::CmcSeen seen;
  absl::StatusOr<ParsedRequest> parsed = format == "cmc"
                                             ? ParseRequest(format, der, /*stored=*/false, &seen)
                                             : ParseRequest(format, der);
  if (!parsed.ok()) {
    // A request refused by an integrity check (or malformed once its
    // PKCS#10 was read) is a failed row; bytes that only look like a
    // request (a certificate, a truncated file) change nothing stored.
    const bool row =
        pki::RequestCheckOf(parsed.status()) != pki::RequestCheck::kStructure || seen.pkcs10_parsed;
    return RecordRefused(requester, format, template_hint, request_sha256, seen, parsed.status(),
                         row);
  }
  RequestRecord r;
  r.requester = principal;
  // The template as resolved (what the request names when no hint is
  // given), so that the row tells a Certificate Manager what was asked for.
  r.template_name = ResolveTemplateName(config_, template_hint, parsed->pkcs10.template_oid,
                                        parsed->pkcs10.template_name);
  r.spki_sha256 = parsed->pkcs10.spki_sha256();
  r.request_sha256 = request_sha256;
  r.format = format;
  // The encrypted key is never stored: the CA's own exchange key opens it.
  // What is kept is the key archived to KRAs (or nothing, if refused).
  r.raw = parsed->encrypted_key ? parsed->without_encrypted_key : der;
  r.subject = pki::FormatName(X509_REQ_get_subject_name(parsed->pkcs10.req.get()));
  r.disposition = Disposition::kPending;
  // Marks the row as being processed until it is resolved or left for a
  // Certificate Manager: one still marked at start was interrupted.
  r.disposition_message = kRequestInProcess;
  r.submitted_at = clock_();
  // The row and its "request.received" record are one transaction.
  auto id = store_.InsertRequest(r, [&](int64_t new_id) {
    return std::vector<AuditEntry>{{principal, "request.received",
                                    json{{"request_id", new_id},
                                         {"format", format},
                                         {"subject", Echo(r.subject, 1024)},
                                         {"template_hint", template_hint}}
                                        .dump()}};
  });
  if (!id.ok()) return id.status();
  r.id = *id;
  return Process(std::move(r), principal, /*approving=*/false, &*parsed, &requester);
}

absl::Status CertificateAuthority::RecordRefused(const Requester& requester,
                                                 const std::string& format,
                                                 const std::string& template_hint,
                                                 const std::string& request_sha256,
                                                 const pki::CmcSeen& seen, const absl::Status& why,
                                                 bool make_row) {
  const absl::Status refusal = RequestCheckError(why);
  const std::string reason = Echo(std::string(why.message()), 512);
  // The row: no body (it may hold the private key encrypted to the CA),
  // only what was read safely, each field bounded.
  RequestRecord r;
  r.requester = requester.principal;
  r.format = format;
  r.template_name = seen.pkcs10_parsed ? ResolveTemplateName(config_, template_hint,
                                                             seen.template_oid, seen.template_name)
                                       : Echo(template_hint, 256);
  r.subject = seen.pkcs10_parsed ? Echo(seen.subject, 1024) : std::string();
  r.spki_sha256 = seen.spki_sha256;
  r.request_sha256 = request_sha256;
  r.disposition = Disposition::kFailed;
  r.disposition_message = StrCat("refused by an integrity check (",
                                 pki::RequestCheckName(pki::RequestCheckOf(why)), "): ", reason);
  r.status_code = HResultOf(refusal).value_or(0);
  r.submitted_at = clock_();
  r.resolved_at = r.submitted_at;
  r.resolved_by = "policy";
  absl::StatusOr<int64_t> id = int64_t{0};
  if (make_row) id = store_.InsertRequest(r);
  // At most once a minute per principal and format, with the count of the
  // rejections it stands for: requests that merely look like one cannot
  // flood the log (the rows are few bytes each).
  if (const int64_t rejected = rejections_.Take(StrCat(requester.principal, "\n", format));
      rejected > 0) {
    Audit(requester.principal, "request.rejected",
          json{{"format", format},
               {"request_id", id.ok() ? *id : 0},
               {"check", pki::RequestCheckName(pki::RequestCheckOf(why))},
               {"hresult", HResultHex(r.status_code)},
               {"reason", reason},
               {"request_sha256", request_sha256},
               {"rejected_requests", rejected}}
              .dump());
  }
  // No row (or the store failed, which it reports): the refusal stands.
  if (!id.ok() || *id == 0) return refusal;
  absl::Status out(refusal.code(), StrCat("request ", *id, " failed: ", refusal.message()));
  if (auto p = refusal.GetPayload("type.keywarden/hresult")) {
    out.SetPayload("type.keywarden/hresult", *p);
  }
  return out;
}

absl::Status CertificateAuthority::ResolveUnissued(RequestRecord& request, Disposition disposition,
                                                   const std::string& message, uint32_t code,
                                                   const std::string& by,
                                                   std::vector<AuditEntry> audit) {
  // What the database holds decides (a key archived at this submission and
  // refused before it was stored was never kept).
  auto row = store_.GetRequest(request.id);
  if (!row.ok()) return row.status();
  const bool holds_key = row->archived_key.has_value();
  const bool discard = holds_key && !config_.flags.save_bad_request_key;
  if (holds_key) {
    audit.push_back({by, discard ? "archival.key_discarded" : "archival.key_kept",
                     json{{"request_id", request.id},
                          {"requester", request.requester},
                          {"disposition", DispositionName(disposition)},
                          {"kra_sha1", row->archived_key->kra_sha1},
                          {"save_bad_request_key", config_.flags.save_bad_request_key}}
                         .dump()});
  }
  if (auto st = store_.ResolveRequest(request.id, disposition, message, code, by, clock_(), discard,
                                      audit);
      !st.ok()) {
    return st;
  }
  request.disposition = disposition;
  request.disposition_message = message;
  request.status_code = code;
  if (discard) request.archived_key.reset();
  return absl::OkStatus();
}

absl::Status CertificateAuthority::DenyWith(RequestRecord& request, const absl::Status& why,
                                            const std::string& by) {
  if (hsm::IsHsmFault(why) || IsDatabaseFault(why) || hsm::IsMechanismRefused(why) ||
      (why.code() == absl::StatusCode::kUnavailable && !HResultOf(why).has_value())) {
    // The token (or another part of the CA) failed: not a verdict on the
    // request. It is failed with the CA's reason, never denied.
    return FailCaSide(request, why);
  }
  const uint32_t code = HResultOf(why).value_or(0);
  const std::string message(why.message());
  auto st = ResolveUnissued(
      request, Disposition::kDenied, message, code, by,
      {{by, "request.denied",
        json{{"request_id", request.id}, {"requester", request.requester}, {"reason", message}}
            .dump()}});
  if (!st.ok()) return st;
  // The caller sees the refusal, with the request id to look it up later.
  absl::Status out(why.code(), StrCat("request ", request.id, " denied: ", message));
  if (auto p = why.GetPayload("type.keywarden/hresult"))
    out.SetPayload("type.keywarden/hresult", *p);
  return out;
}

absl::Status CertificateAuthority::FailCaSide(RequestRecord& request, const absl::Status& why) {
  const std::string message(why.message());
  // The CA's own HRESULT, when it has one (0x80090019: the archival
  // self-test failed), is recorded with the failure.
  const uint32_t code = HResultOf(why).value_or(0);
  (void)ResolveUnissued(
      request, Disposition::kFailed, message, code, "system",
      {{"system", "request.failed", json{{"request_id", request.id}, {"reason", message}}.dump()}});
  // A mechanism the token cannot do stays FAILED_PRECONDITION (sending it
  // again does not help); anything else on the CA's side is UNAVAILABLE.
  const bool mechanism = hsm::IsMechanismRefused(why);
  absl::Status out(
      mechanism ? absl::StatusCode::kFailedPrecondition : absl::StatusCode::kUnavailable,
      StrCat("request ", request.id, " failed on the CA's side: ", message));
  if (hsm::IsHsmFault(why)) out.SetPayload(hsm::kTokenFaultPayload, absl::Cord("1"));
  if (mechanism) out.SetPayload(hsm::kMechanismRefusedPayload, absl::Cord("1"));
  if (auto p = why.GetPayload("type.keywarden/hresult"))
    out.SetPayload("type.keywarden/hresult", *p);
  if (IsDatabaseFault(why)) out = MarkDatabaseFault(std::move(out));
  return out;
}

absl::StatusOr<int> CertificateAuthority::ResolveInterrupted(int64_t submitted_before) {
  auto pending = store_.ListRequests(Disposition::kPending, std::numeric_limits<int32_t>::max());
  if (!pending.ok()) return pending.status();
  int resolved = 0;
  for (RequestRecord& r : *pending) {
    // Marked in process at insertion and never left for a Certificate
    // Manager; or (rows from before the marker) for a template that does not
    // pend. A request taken under submission stays pending.
    bool interrupted = r.disposition_message == kRequestInProcess;
    if (!interrupted && r.disposition_message.empty() && !r.template_name.empty()) {
      const TemplateConfig* t = config_.FindTemplate(r.template_name);
      interrupted = t != nullptr && !t->pend;
    }
    if (!interrupted || r.submitted_at >= submitted_before) continue;
    const std::string message =
        "interrupted: the CA stopped while processing the request; submit it again";
    if (auto st = ResolveUnissued(
            r, Disposition::kFailed, message, 0, "system",
            {{"system", "request.interrupted",
              json{{"request_id", r.id}, {"requester", r.requester}, {"reason", message}}.dump()}});
        !st.ok()) {
      if (absl::IsFailedPrecondition(st)) continue;  // resolved by another replica meanwhile
      return st;
    }
    ++resolved;
  }
  return resolved;
}

absl::StatusOr<EnrollmentOutcome> CertificateAuthority::Process(RequestRecord request,
                                                                const std::string& actor,
                                                                bool approving,
                                                                const ParsedRequest* submitted,
                                                                const Requester* requester) {
  const std::string policy = approving ? actor : std::string("policy");
  // A new submission was parsed (every signature and hash checked) from the
  // bytes request.raw was cut from a moment ago: only a stored request, being
  // approved, is parsed again. Parsing costs as much as a token signature.
  absl::StatusOr<ParsedRequest> reparsed;
  const ParsedRequest* stored = submitted;
  if (stored == nullptr) {
    reparsed = ParseRequest(request.format, request.raw, /*stored=*/true);
    if (!reparsed.ok()) {
      // It parsed when it arrived: what fails now is the CA's stored copy
      // (or the CA), not the requester's format.
      return FailCaSide(request, absl::UnavailableError(
                                     StrCat("the stored copy of the request no longer parses: ",
                                            reparsed.status().message())));
    }
    stored = &*reparsed;
  }
  const pki::Pkcs10Request* parsed = &stored->pkcs10;

  // Template: the caller's hint, else what the request names (v2 OID, then v1 name).
  std::string wanted = !request.template_name.empty()  ? request.template_name
                       : !parsed->template_oid.empty() ? parsed->template_oid
                                                       : parsed->template_name;
  if (wanted.empty()) return DenyWith(request, Error(hresult::kNoCertType), policy);
  const TemplateConfig* t = config_.FindTemplate(wanted);
  if (t == nullptr) {
    return DenyWith(request,
                    Error(hresult::kUnsupportedCertType,
                          StrCat("the request was for certificate template (", Echo(wanted),
                                 ") that is not supported by this CA")),
                    policy);
  }
  request.template_name = t->name;
  // Who may enrol is decided when the request arrives, with the identity the
  // door verified; an approval is the Certificate Manager's decision.
  if (requester != nullptr && !MayEnroll(*t, *requester)) {
    return DenyWith(request,
                    Error(hresult::kTemplateDenied,
                          StrCat(requester->principal, " may not enrol for template ", t->name)),
                    policy);
  }

  EVP_PKEY* pub = parsed->public_key();
  std::string key_type;
  if (!KeyTypeAllowed(*t, pub, &key_type)) {
    return DenyWith(request,
                    Error(hresult::kKeyLength,
                          StrCat("template ", t->name, " does not accept ", key_type, " keys")),
                    policy);
  }
  if (EVP_PKEY_get_bits(pub) < t->min_key_bits) {
    return DenyWith(
        request,
        Error(hresult::kKeyLength, StrCat(EVP_PKEY_get_bits(pub), "-bit key; template ", t->name,
                                          " needs at least ", t->min_key_bits)),
        policy);
  }
  // Subject: from the request, or from the authenticated principal when the
  // template says so or the request has none (Windows autoenrollment).
  ossl::UniquePtr<X509_NAME> subject;
  if (t->subject == SubjectSource::kPrincipal || parsed->empty_subject) {
    auto name = pki::ParseName(request.requester);
    if (!name.ok() || X509_NAME_entry_count(name->get()) == 0) {
      return DenyWith(request,
                      Error(hresult::kBadRequestSubject,
                            StrCat("no subject: the request has none and the principal \"",
                                   request.requester, "\" is not a usable name")),
                      policy);
    }
    subject = std::move(*name);
  } else {
    subject.reset(X509_NAME_dup(X509_REQ_get_subject_name(parsed->req.get())));
  }
  // Key archival (seed: "Understanding the Archival Process").
  const bool carries_key = stored->encrypted_key_hash.has_value();
  // One key, one owner: checked before anything is archived, at submission
  // and again at approval (another certificate may have been issued since).
  std::string same_key_as;
  const std::string key_hash = parsed->spki_sha256();
  const bool archiving_key = carries_key && !request.archived_key;
  auto refuse_key = [&](const absl::Status& st) -> absl::StatusOr<EnrollmentOutcome> {
    if (!HResultOf(st)) return FailCaSide(request, st);  // the store, not the request
    Audit(policy, "request.key_in_use",
          json{{"request_id", request.id},
               {"requester", request.requester},
               {"subject", pki::FormatName(subject.get())},
               {"replay", st.message().find("replay:") != absl::string_view::npos},
               {"reason", std::string(st.message())}}
              .dump());
    return DenyWith(request, st, policy);
  };
  if (auto st = CheckKeyOwner(key_hash, pki::FormatName(subject.get()), request.requester,
                              archiving_key, request.id, {}, &same_key_as);
      !st.ok()) {
    return refuse_key(st);
  }
  if (carries_key && t->archival == ArchivalPolicy::kNone) {
    // A CA without any KRA says so first (seed: 0x8009400a for every
    // request that carries a key), else the template is the problem.
    absl::Status why = kras_->Usable();
    if (HResultOf(why) != hresult::kKeyArchivalNotConfigured.code) {
      why = Error(hresult::kArchivedKeyUnexpected,
                  StrCat("template ", t->name, " does not archive keys"));
    }
    Audit(policy, "archival.refused",
          json{{"request_id", request.id},
               {"requester", request.requester},
               {"reason", std::string(why.message())}}
              .dump());
    return DenyWith(request, why, policy);
  }
  if (!carries_key && t->archival == ArchivalPolicy::kRequired) {
    return DenyWith(
        request,
        Error(hresult::kArchivedKeyRequired, StrCat("template ", t->name,
                                                    " requires key archival (send a CMC request "
                                                    "with the encrypted private key)")),
        policy);
  }
  bool archived_now = false;
  if (carries_key && !request.archived_key) {
    absl::StatusOr<ArchivedKey> archived;
    if (submitted == nullptr || !submitted->encrypted_key) {
      // The key was never archived (the CA stopped between storing the
      // request and archiving its key): the CA's side, not the request's.
      return FailCaSide(request,
                        absl::UnavailableError(
                            "interrupted: the request's encrypted private key was not archived "
                            "before the CA stopped and is no longer available; resubmit"));
    } else if (std::find(t->key_usage.begin(), t->key_usage.end(), "keyEncipherment") ==
               t->key_usage.end()) {
      archived = Error(hresult::kBadKeyType,
                       StrCat("template ", t->name,
                              " issues signature-only certificates (no keyEncipherment); "
                              "signature keys are never archived"));
    } else {
      archived = archiver_->ArchiveSubmitted(*submitted->encrypted_key,
                                             *submitted->encrypted_key_hash, pub);
    }
    if (!archived.ok()) {
      if (HResultOf(archived.status())) {
        Audit(policy, "archival.refused",
              json{{"request_id", request.id},
                   {"requester", request.requester},
                   {"reason", std::string(archived.status().message())}}
                  .dump());
      }
      if (!HResultOf(archived.status())) {
        // Not a verdict on the request: the token (down, or unable to do
        // the mechanism the client chose) or the store failed.
        return FailCaSide(request, archived.status());
      }
      return DenyWith(request, archived.status(), policy);
    }
    request.archived_key = std::move(*archived);
    archived_now = true;
  }
  // A request approved later is checked again against the configuration of
  // the day, with the roles its requester's subject is bound to.
  const Requester from_config{request.requester, config_.RolesOf(request.requester)};
  const Requester& who = requester != nullptr ? *requester : from_config;
  if (auto st = CheckSubjectNamesNoPrincipal(config_, pki::FormatName(subject.get()), who.principal,
                                             who.roles);
      !st.ok()) {
    Audit(policy, "request.names_principal",
          json{{"request_id", request.id},
               {"requester", request.requester},
               {"subject", pki::FormatName(subject.get())}}
              .dump());
    return DenyWith(request, st, policy);
  }
  // subjectAltName, template extension, S/MIME capabilities: the names are
  // checked like the subject (an enrollee cannot have another account's UPN
  // or e-mail certified either).
  auto extensions = TemplateExtensions(config_, *t, parsed->req.get(), who.principal, who.roles);
  if (!extensions.ok()) {
    if (HResultOf(extensions.status()) == hresult::kAccessDenied.code) {
      Audit(policy, "request.names_principal",
            json{{"request_id", request.id},
                 {"requester", request.requester},
                 {"reason", std::string(extensions.status().message())}}
                .dump());
    }
    return DenyWith(request, extensions.status(), policy);
  }

  if (t->pend && !approving) {
    // The response is made (and signed on the token) before anything is
    // committed: a token fault here leaves the request failed on the CA's
    // side with nothing attached, so that sending it again works.
    RequestRecord answered = request;
    answered.disposition_message = "Taken Under Submission";
    auto response = CmcResponseFor(answered, std::nullopt, stored->body_part_id);
    if (!response.ok()) return FailCaSide(request, response.status());
    if (archived_now) {
      if (auto st = store_.AttachArchivedKey(request.id, *request.archived_key); !st.ok()) {
        return st;
      }
      metrics::Add(metrics::kArchivals, {{"source", "enrollment"}});
      Audit(policy, "archival.done",
            json{{"request_id", request.id},
                 {"requester", request.requester},
                 {"kra_sha1", request.archived_key->kra_sha1},
                 {"scheme", request.archived_key->scheme},
                 {"pending", true}}
                .dump());
    }
    request.disposition_message = "Taken Under Submission";
    if (!approving) {
      if (auto st = store_.SetPendingMessage(request.id, request.disposition_message, clock_(),
                                             {{"policy", "request.pending",
                                               json{{"request_id", request.id},
                                                    {"template", t->name},
                                                    {"requester", request.requester}}
                                                   .dump()}});
          !st.ok()) {
        return st;
      }
    }
    EnrollmentOutcome pending{std::move(request), std::nullopt, {}};
    pending.cmc_response = std::move(*response);
    return pending;
  }

  const int64_t now = clock_();
  CertificateSpec spec;
  spec.subject = subject.get();
  spec.public_key = pub;
  spec.spki = X509_REQ_get_X509_PUBKEY(parsed->req.get());
  spec.not_before = now - 60;
  spec.not_after = now + t->validity.count();
  spec.key_usage = t->key_usage;
  spec.extended_key_usage = t->extended_key_usage;
  spec.extensions = std::move(*extensions);
  const uint64_t faults_before = token_->faults();
  auto cert = issuer_->IssueCertificate(spec);
  if (!cert.ok() && !hsm::IsHsmFault(cert.status()) &&
      (token_->faults() != faults_before || !token_->available())) {
    // OpenSSL hides why the token's signature failed: the token failed meanwhile.
    cert = hsm::HsmUnavailable(
        StrCat("issuing on token \"", token_->label(), "\": ", cert.status().message()));
  }
  if (!cert.ok()) {
    const std::string message(cert.status().message());
    (void)ResolveUnissued(request, Disposition::kFailed, message, 0, "system",
                          {{"system", "request.failed",
                            json{{"request_id", request.id}, {"reason", message}}.dump()}});
    return cert.status();
  }
  CertificateRecord record = CertificateRecordFor(cert->get(), request.id, t->name);
  // The CMC response is signed before the issuance is committed: a token
  // fault here fails the request on the CA's side with nothing issued or
  // archived, so the client can send the same request again (once
  // committed, it would be a replay of an archived key).
  RequestRecord answered = request;
  answered.disposition = Disposition::kIssued;
  answered.disposition_message = "Issued";
  answered.serial = record.serial;
  answered.resolved_at = now;
  answered.resolved_by = policy;
  auto response = CmcResponseFor(answered, record, stored->body_part_id, cert->get());
  if (!response.ok()) return FailCaSide(request, response.status());
  // The issuance, its archive and their audit records are one transaction:
  // never an issued certificate without its archive or its audit trail.
  std::vector<AuditEntry> audit;
  if (archived_now) {
    audit.push_back({policy, "archival.done",
                     json{{"request_id", request.id},
                          {"requester", request.requester},
                          {"serial", record.serial},
                          {"kra_sha1", request.archived_key->kra_sha1},
                          {"scheme", request.archived_key->scheme}}
                         .dump()});
  }
  json issued_details{{"request_id", request.id},  {"requester", request.requester},
                      {"template", t->name},       {"serial", record.serial},
                      {"subject", record.subject}, {"sha1", record.sha1}};
  // A renewal with the same key by the same owner (policy-allowed).
  if (!same_key_as.empty()) issued_details["same_key_as"] = same_key_as;
  audit.push_back({policy, "request.issued", issued_details.dump()});
  // The owner check again, in the issuing transaction under the key's lock:
  // another submission of the same key may have been issued since.
  absl::Status key_refusal;
  absl::Status recorded = store_.Transact(
      StrCat("issuing certificate ", record.serial, " for request ", request.id),
      [&](Transaction& txn) -> absl::Status {
        key_refusal = absl::OkStatus();
        if (auto st = txn.Lock(StrCat("key:", key_hash)); !st.ok()) return st;
        if (auto st = CheckKeyOwnerIn(txn, key_hash, pki::FormatName(subject.get()),
                                      request.requester, archiving_key, request.id, {}, nullptr);
            !st.ok()) {
          key_refusal = st;
          return st;
        }
        if (auto st = txn.RecordIssued(request.id, record, request.archived_key, policy, now);
            !st.ok()) {
          return st;
        }
        for (const AuditEntry& entry : audit) {
          if (auto appended = txn.AppendAudit(entry, now); !appended.ok()) {
            return appended.status();
          }
        }
        return absl::OkStatus();
      });
  if (!recorded.ok()) {
    if (!key_refusal.ok()) return refuse_key(key_refusal);
    return recorded;
  }
  metrics::Add(metrics::kSignatures, {{"kind", "certificate"}});
  if (archived_now) metrics::Add(metrics::kArchivals, {{"source", "enrollment"}});
  request.disposition = Disposition::kIssued;
  request.disposition_message = "Issued";
  request.serial = record.serial;
  request.resolved_at = now;
  request.resolved_by = policy;
  EnrollmentOutcome issued{std::move(request), std::move(record), {}};
  issued.cmc_response = std::move(*response);
  return issued;
}

absl::StatusOr<std::vector<uint8_t>> CertificateAuthority::CmcResponseFor(
    const RequestRecord& request, const std::optional<CertificateRecord>& issued_record,
    std::optional<int64_t> body_part_id, X509* issued_certificate) {
  if (request.format != "cmc") return std::vector<uint8_t>();
  pki::CmcResponseSpec spec;
  if (body_part_id) {
    spec.request_body_part = *body_part_id;
  } else {
    auto parsed = ParseRequest(request.format, request.raw, /*stored=*/true);
    spec.request_body_part = parsed.ok() ? parsed->body_part_id : 1;
  }
  ossl::UniquePtr<X509> decoded;
  X509* issued = issued_record ? issued_certificate : nullptr;
  if (issued_record && issued == nullptr) {
    const unsigned char* p = issued_record->der.data();
    decoded.reset(d2i_X509(nullptr, &p, static_cast<long>(issued_record->der.size())));
    issued = decoded.get();
  }
  if (request.disposition == Disposition::kIssued && issued != nullptr) {
    spec.status = pki::CmcStatus::kSuccess;
    spec.status_string = "Issued";
    spec.issued = issued;
    spec.certificates.push_back(issued);
  } else if (request.disposition == Disposition::kPending) {
    spec.status = pki::CmcStatus::kPending;
    spec.status_string = "Taken Under Submission";
  } else if (request.disposition == Disposition::kIssued) {
    return absl::InternalError(StrCat("request ", request.id, " is issued but certificate ",
                                      request.serial,
                                      " does not decode: no CMC response can be made"));
  } else {
    return std::vector<uint8_t>();
  }
  if (request.archived_key) spec.encrypted_key_hash = request.archived_key->encrypted_key_hash;
  spec.certificates.push_back(certificate());
  for (const auto& c : chain_) spec.certificates.push_back(c.get());
  auto der = pki::BuildCmcResponse(issuer_->libctx(), issuer_->properties(), issuer_->signing_key(),
                                   certificate(), spec, issuer_->ca_certificate_software());
  if (!der.ok()) {
    // A CA-side fault (token, signature check), never the client's; a
    // token fault stays UNAVAILABLE (the client may try again).
    const std::string why = StrCat("the CA could not make the CMC response for request ",
                                   request.id, ": ", der.status().message());
    return hsm::IsHsmFault(der.status()) ? hsm::HsmUnavailable(why) : absl::InternalError(why);
  }
  return std::move(*der);
}

absl::StatusOr<EnrollmentOutcome> CertificateAuthority::Retrieve(const std::string& principal,
                                                                 int64_t request_id,
                                                                 bool any_requester) {
  auto request = store_.GetRequest(request_id);
  if (!request.ok()) return request.status();
  if (!any_requester && request->requester != principal) {
    return Error(hresult::kAccessDenied,
                 StrCat("request ", request_id, " was submitted by someone else"));
  }
  EnrollmentOutcome out{std::move(*request), std::nullopt, {}};
  if (out.request.disposition == Disposition::kPending && out.request.disposition_message.empty()) {
    out.request.disposition_message = "Taken Under Submission";
  }
  if (out.request.disposition == Disposition::kIssued) {
    auto cert = store_.GetCertificate(out.request.serial);
    if (!cert.ok()) return cert.status();
    out.certificate = std::move(*cert);
  }
  auto response = CmcResponseFor(out.request, out.certificate);
  if (!response.ok()) return response.status();
  out.cmc_response = std::move(*response);
  return out;
}

absl::StatusOr<std::vector<CertificateAuthority::RecoveryCandidate>>
CertificateAuthority::FindArchivedKeys(const std::string& search_in,
                                       std::vector<std::string>* tried_out) {
  std::string search = search_in;
  while (!search.empty() && std::isspace(static_cast<unsigned char>(search.back()))) {
    search.pop_back();
  }
  while (!search.empty() && std::isspace(static_cast<unsigned char>(search.front()))) {
    search.erase(search.begin());
  }
  if (search.empty()) return Error(hresult::kInvalidArg, "the search token is empty");
  if (search.size() > 1024) return Error(hresult::kInvalidArg, "the search token is too long");

  // Each reading of the token: a query and what to say when it finds nothing.
  struct Reading {
    CertificateQuery query;
    std::string what;
  };
  std::vector<Reading> readings;
  std::vector<std::string> tried;
  auto query = [&](std::string what, auto fill) {
    Reading r;
    r.query.only_with_archived_key = true;
    r.query.limit = 1000;
    fill(r.query);
    r.what = std::move(what);
    readings.push_back(std::move(r));
  };
  // Every certificate of a directory account: its subject, UPN, e-mail.
  auto account_readings = [&](const AccountConfig& a, const std::string& how) {
    const std::string who = StrCat(" (account ", how, ")");
    query(StrCat("certificate with subject ", a.principal, who),
          [&](CertificateQuery& q) { q.subject = a.principal; });
    if (!a.upn.empty()) {
      query(StrCat("certificate with UPN ", a.upn, who),
            [&](CertificateQuery& q) { q.upn = a.upn; });
    }
    if (!a.email.empty()) {
      query(StrCat("certificate with e-mail ", a.email, who),
            [&](CertificateQuery& q) { q.email = a.email; });
    }
  };

  const std::string hex = NormalizeSerial(search);
  if (!hex.empty() && hex.find_first_not_of("0123456789abcdef") == std::string::npos) {
    query(StrCat("certificate with serial number ", hex),
          [&](CertificateQuery& q) { q.serial = hex; });
    if (hex.size() == 40) {
      query(StrCat("certificate with SHA-1 hash ", hex),
            [&](CertificateQuery& q) { q.sha1 = hex; });
    }
  }
  // A request id is 1 or more: 0 would be the store's "no filter", every key.
  if (search.find_first_not_of("0123456789") == std::string::npos && search.size() < 16) {
    const int64_t id = std::stoll(search);
    if (id < 1) {
      return Error(hresult::kInvalidArg, StrCat("the search token \"", search,
                                                "\" is not a request id (request ids start at 1)"));
    }
    query(StrCat("request ", id), [&](CertificateQuery& q) { q.request_id = id; });
  }
  if (search.find('\\') != std::string::npos) {
    // DOMAIN\user: only what the directory says that account is. The
    // domain is part of the name: a user of another domain is someone else.
    if (const AccountConfig* a = config_.AccountByLogonName(search)) {
      account_readings(*a, search);
    } else {
      tried.push_back(StrCat("no account ", search,
                             " in the directory ([[account]] logon_name, matched exactly)"));
    }
  } else {
    if (search.find('@') != std::string::npos) {
      const AccountConfig* by_upn = config_.AccountByUpn(search);
      const AccountConfig* by_email = config_.AccountByEmail(search);
      if (by_upn != nullptr) account_readings(*by_upn, StrCat("with UPN ", search));
      if (by_email != nullptr && by_email != by_upn) {
        account_readings(*by_email, StrCat("with e-mail ", search));
      }
      if (by_upn == nullptr && by_email == nullptr) {
        tried.push_back(StrCat("no account with UPN or e-mail ", search,
                               " in the directory ([[account]], matched exactly)"));
      }
      // Certificates whose subjectAltName names it (imported ones too).
      query(StrCat("certificate with UPN ", search), [&](CertificateQuery& q) { q.upn = search; });
      query(StrCat("certificate with e-mail ", search),
            [&](CertificateQuery& q) { q.email = search; });
    }
    if (search.find('=') != std::string::npos) {
      query(StrCat("certificate with subject ", search),
            [&](CertificateQuery& q) { q.subject = search; });
    }
    query(StrCat("certificate with CN=", search),
          [&](CertificateQuery& q) { q.common_name = search; });
  }

  std::vector<RecoveryCandidate> out;
  std::set<std::string> seen;
  for (const Reading& r : readings) {
    auto found = store_.FindCertificates(r.query);
    if (!found.ok()) return found.status();
    bool any = false;
    for (auto& c : *found) {
      auto request = store_.GetRequest(c.request_id);
      if (!request.ok()) return request.status();
      if (!request->archived_key) continue;
      any = true;
      if (!seen.insert(c.serial).second) continue;
      out.push_back(RecoveryCandidate{std::move(c), std::move(*request)});
    }
    if (!any) tried.push_back(StrCat("no ", r.what, " has an archived key"));
  }
  if (tried_out != nullptr) *tried_out = std::move(tried);
  return out;
}

std::string CertificateAuthority::DescribeCandidate(const RecoveryCandidate& c) {
  return StrCat("Serial Number: ", c.certificate.serial, "; Subject: ", c.certificate.subject,
                c.certificate.upn.empty() ? "" : StrCat("; UPN: ", c.certificate.upn),
                c.certificate.email.empty() ? "" : StrCat("; E-mail: ", c.certificate.email),
                "; NotBefore: ", c.certificate.not_before, "; NotAfter: ", c.certificate.not_after,
                "; Template: ", c.certificate.template_name,
                "; Cert Hash(sha1): ", c.certificate.sha1, "; Request: ", c.request.id);
}

absl::StatusOr<CertificateAuthority::RecoveryBlobResult> CertificateAuthority::GetRecoveryBlob(
    const std::string& who, const std::string& search, int64_t history_version) {
  if (history_version < 0) {
    return Error(hresult::kInvalidArg, StrCat("history version ", history_version,
                                              " is negative (0: the current envelope)"));
  }
  std::vector<std::string> tried;
  auto candidates = FindArchivedKeys(search, &tried);
  if (!candidates.ok()) return candidates.status();
  if (candidates->empty()) {
    return Error(hresult::kNotFound, StrCat("no archived key matches \"", Echo(search),
                                            "\": ", Echo(StrJoin(tried, "; "), 4096)));
  }
  if (candidates->size() > 1) {
    std::vector<std::string> lines;
    for (const auto& c : *candidates) lines.push_back(DescribeCandidate(c));
    return WithCandidates(
        Error(hresult::kAmbiguousName, StrCat(candidates->size(), " archived keys match \"", search,
                                              "\"; search by serial number or SHA-1 hash")),
        lines);
  }
  RecoveryBlobResult result{std::move(candidates->front()), {}};
  const RecoveryCandidate& c = result.candidate;
  // The envelope to wrap: the current one, or one a KRA rollover replaced.
  const std::vector<uint8_t>* envelope = &c.request.archived_key->envelope;
  const std::vector<std::string>* kra_sha1 = &c.request.archived_key->kra_sha1;
  std::vector<ArchiveHistoryRecord> history;
  if (history_version > 0) {
    auto read = store_.ArchiveHistory(c.request.id);
    if (!read.ok()) return read.status();
    history = std::move(*read);
    auto it = std::find_if(history.begin(), history.end(), [&](const ArchiveHistoryRecord& h) {
      return h.version == history_version;
    });
    if (it == history.end()) {
      return Error(hresult::kNotFound,
                   StrCat("the archive of request ", c.request.id, " has no history version ",
                          history_version, " (it has ", history.size(),
                          history.size() == 1 ? " replaced envelope" : " replaced envelopes",
                          "; list them with the history flag, `keywarden getkey --history`)"));
    }
    envelope = &it->envelope;
    kra_sha1 = &it->kra_sha1;
    // A rollover may have been made to retire a compromised KRA: the
    // envelope it replaced is never released again once one of its KRA
    // certificates is revoked (in this CA's database, or on its issuer's
    // CRL while still configured). Expired KRAs still recover (the seed).
    const std::vector<KraStatus> configured = kras_->Status();
    for (const std::string& sha1 : *kra_sha1) {
      bool revoked = std::any_of(configured.begin(), configured.end(), [&](const KraStatus& k) {
        return k.sha1 == sha1 && k.state == KraState::kRevoked;
      });
      CertificateQuery q;
      q.sha1 = sha1;
      q.limit = 1;
      auto own = store_.FindCertificates(q);
      if (!own.ok()) return own.status();
      if (!own->empty() && own->front().revoked) revoked = true;
      if (revoked) {
        const std::string why =
            StrCat("replaced envelope ", history_version, " of request ", c.request.id,
                   " is encrypted to KRA certificate ", sha1,
                   ", which is revoked: it is not released (recover the current envelope)");
        Audit(
            who, "archival.key_retrieval_failed",
            json{
                {"request_id", c.request.id}, {"history_version", history_version}, {"reason", why}}
                .dump());
        return Error(hresult::kCertRevoked, why);
      }
    }
  }
  const unsigned char* p = c.certificate.der.data();
  ossl::UniquePtr<X509> user(d2i_X509(nullptr, &p, static_cast<long>(c.certificate.der.size())));
  if (!user)
    return absl::DataLossError(
        StrCat("certificate ", c.certificate.serial, " in the database does not parse"));
  std::vector<std::shared_ptr<X509>> kras;
  std::vector<X509*> kra_ptrs;
  for (const std::string& sha1 : *kra_sha1) {
    auto cert = kras_->FindCertificate(sha1);
    if (!cert.ok()) {
      json details{{"request_id", c.request.id}, {"reason", std::string(cert.status().message())}};
      if (history_version > 0) details["history_version"] = history_version;
      Audit(who, "archival.key_retrieval_failed", details.dump());
      return cert.status();
    }
    kras.push_back(*cert);
    kra_ptrs.push_back(cert->get());
  }
  pki::RecoveryBlobInput in;
  in.ca_key = issuer_->signing_key();
  in.ca_certificate = certificate();
  in.ca_certificate_software = issuer_->ca_certificate_software();
  for (const auto& x : chain_) in.ca_chain.push_back(x.get());
  in.user_certificate = user.get();
  if (c.certificate.template_name != kForeignTemplate) {
    in.user_chain.push_back(certificate());
    for (const auto& x : chain_) in.user_chain.push_back(x.get());
  }
  in.kra_certificates = kra_ptrs;
  in.enveloped_data = *envelope;
  auto blob = pki::BuildRecoveryBlob(issuer_->libctx(), issuer_->properties(), in);
  if (!blob.ok()) {
    if (absl::IsNotFound(blob.status())) {
      return Error(hresult::kNotFound, std::string(blob.status().message()));
    }
    return blob.status();
  }
  // seed event 787: "Certificate Services retrieved an archived key." The
  // blob leaves only once this record is committed (fail closed): a
  // retrieval nobody can see later must not happen.
  json retrieved{{"request_id", c.request.id},
                 {"serial", c.certificate.serial},
                 {"subject", c.certificate.subject},
                 {"kra_sha1", *kra_sha1}};
  if (history_version > 0) retrieved["history_version"] = history_version;
  if (auto audited =
          AuditCommitted(who, "archival.key_retrieved", retrieved.dump(),
                         StrCat("the archived key of request ", c.request.id, " was not released"));
      !audited.ok()) {
    return audited;
  }
  metrics::Add(metrics::kRetrievals);
  result.blob = std::move(*blob);
  return result;
}

std::vector<KraStatus> CertificateAuthority::ReloadKras(const std::string& who) {
  // Audited under the caller's name; the outcome follows as kra.loaded {"by": who}.
  Audit(who, "kra.reload_requested", json::object().dump());
  kras_->Load(who);
  return kras_->Status();
}

CertificateAuthority::RuntimeReload CertificateAuthority::ReloadRuntime(const std::string& who) {
  RuntimeReload out;
  const std::vector<KraStatus> kras = ReloadKras(who);
  size_t valid = 0;
  for (const auto& k : kras) valid += k.state == KraState::kValid ? 1 : 0;
  out.reloaded.push_back(
      StrCat("KRA certificates and CRLs (", valid, " of ", kras.size(), " valid)"));
  // Client CAs for roles and revocation, and the client CRLs.
  for (std::string& line : trust_->Reload()) {
    const bool failed = line.find(": not ") != std::string::npos;
    (failed ? out.failed : out.reloaded).push_back(std::move(line));
  }
  return out;
}

absl::StatusOr<CertificateAuthority::ImportResult> CertificateAuthority::ImportKey(
    const std::string& who, std::span<const uint8_t> pfx, const hsm::SecretString& password,
    bool foreign) {
  constexpr size_t kMaxPfx = 1024 * 1024;
  if (pfx.empty()) return Error(hresult::kInvalidArg, "the PKCS#12 file is empty");
  if (pfx.size() > kMaxPfx) {
    return Error(hresult::kInvalidArg,
                 StrCat("the PKCS#12 file is ", pfx.size(), " bytes; the limit is ", kMaxPfx));
  }
  // PKCS12_parse takes a C string: a password with a NUL would be cut there.
  if (password.view().find('\0') != std::string_view::npos) {
    return Error(hresult::kInvalidArg,
                 "the password holds a NUL byte; a password is taken whole, never cut at a NUL");
  }
  auto refuse = [&](const absl::Status& why) {
    Audit(who, "archival.import_refused", json{{"reason", std::string(why.message())}}.dump());
    return why;
  };
  auto contents = pki::ReadPkcs12(pfx, password);
  if (!contents.ok()) {
    const absl::Status& why = contents.status();
    const std::string detail(why.message());
    switch (why.code()) {
      case absl::StatusCode::kPermissionDenied:  // the MAC: a wrong password
        return refuse(Error(hresult::kInvalidPassword, detail));
      case absl::StatusCode::kUnimplemented:  // a cipher not even the legacy provider has
        return refuse(Error(hresult::kBadAlgorithm, detail));
      case absl::StatusCode::kInternal:  // this side's OpenSSL, not the file
        return why;
      default:
        return refuse(Error(hresult::kAsn1BadTag, detail));
    }
  }
  if (std::none_of(contents->keys.begin(), contents->keys.end(),
                   [](const auto& k) { return k.certificate != nullptr; })) {
    return refuse(Error(hresult::kInvalidArg,
                        contents->keys.empty()
                            ? std::string("the PKCS#12 must hold a private key and its certificate")
                            : StrCat("the PKCS#12 holds ", contents->keys.size(),
                                     " private key(s) but no certificate for any of them")));
  }
  // seed (certutil -importKMS): every key of the file, each reported.
  ImportResult result;
  absl::Status first_failure;
  for (size_t i = 0; i < contents->keys.size(); ++i) {
    auto& entry = contents->keys[i];
    ImportedKey k;
    if (!entry.certificate) {
      // Reported, never archived: without its certificate a key has no owner.
      k.status = Error(hresult::kInvalidArg,
                       StrCat("key ", i + 1, " of the PKCS#12 has no certificate in the file"));
      result.keys.push_back(std::move(k));
      continue;
    }
    k.subject = pki::FormatName(X509_get_subject_name(entry.certificate.get()));
    auto one = ImportOneKey(who, std::move(entry.key), entry.certificate.get(), foreign);
    if (one.ok()) {
      k.serial = one->serial;
      k.request_id = one->request_id;
      k.kra_sha1 = one->kra_sha1;
      k.foreign = one->foreign;
      if (result.request_id == 0) {
        result.request_id = one->request_id;
        result.serial = one->serial;
        result.kra_sha1 = one->kra_sha1;
        result.foreign = one->foreign;
      }
    } else {
      k.status = one.status();
      k.serial = SerialHex(entry.certificate.get());
      k.signature_only = HResultOf(one.status()) == hresult::kBadKeyType.code;
      if (first_failure.ok()) first_failure = one.status();
    }
    result.keys.push_back(std::move(k));
  }
  if (result.request_id == 0) return first_failure;
  return result;
}

absl::StatusOr<CertificateAuthority::ImportResult> CertificateAuthority::ImportOneKey(
    const std::string& who, ossl::UniquePtr<EVP_PKEY> key, X509* cert_in, bool foreign) {
  auto refuse = [&](const absl::Status& why) {
    Audit(who, "archival.import_refused", json{{"reason", std::string(why.message())}}.dump());
    return why;
  };
  ossl::UniquePtr<X509> cert(X509_dup(cert_in));
  if (!cert) return hsm::OpenSslError("copy the imported certificate");
  const uint32_t ku = X509_get_key_usage(cert.get());
  if (ku != UINT32_MAX && (ku & KU_KEY_ENCIPHERMENT) == 0) {
    // seed (certutil -importKMS): "Ignored signature certificates".
    return refuse(Error(hresult::kBadKeyType,
                        StrCat("certificate ", pki::FormatName(X509_get_subject_name(cert.get())),
                               " is a signature certificate (no keyEncipherment); signature keys "
                               "are never archived")));
  }

  CertificateQuery q;
  q.sha1 = pki::Sha1Thumbprint(cert.get());
  auto found = store_.FindCertificates(q);
  if (!found.ok()) return found.status();
  const bool ours = !found->empty() && found->front().request_id != 0;
  if (!ours) {
    if (!found->empty()) {
      return refuse(Error(hresult::kInvalidArg,
                          StrCat("certificate ", q.sha1,
                                 " is one of the CA's own certificates, not an end entity's")));
    }
    if (!config_.flags.enable_foreign || !foreign) {
      return refuse(Error(
          hresult::kNotFound,
          StrCat("certificate ", pki::FormatName(X509_get_subject_name(cert.get())), " (SHA-1 ",
                 q.sha1,
                 ") was not issued by this CA; archiving a foreign key needs KRAF_ENABLEFOREIGN "
                 "([flags] enable_foreign = true) and -f")));
    }
  } else {
    auto request = store_.GetRequest(found->front().request_id);
    if (!request.ok()) return request.status();
    if (request->archived_key) {
      return refuse(Error(hresult::kBadRequestStatus,
                          StrCat("the key of certificate ", found->front().serial,
                                 " is already archived (request ", request->id, ")")));
    }
  }

  // The stored certificate is indexed by the hash of the key bytes it
  // carries: a second encoding of a key there (BER, a compressed EC point)
  // would be a second key to every later check (as for requests,
  // pki::ParsePkcs10).
  const std::vector<uint8_t> cert_der = pki::CertificateDer(cert.get());
  const std::span<const uint8_t> spki = pki::CertificateSpki(cert_der);
  if (auto read = pki::ReadPublicKey(spki); !read.ok()) {
    if (read.status().code() != absl::StatusCode::kInvalidArgument) return read.status();
    return refuse(
        Error(hresult::kInvalidArg,
              StrCat("certificate ", pki::FormatName(X509_get_subject_name(cert.get())),
                     ": its public key (SubjectPublicKeyInfo) ", read.status().message(),
                     "; a key has one encoding only here, so that it is found under one owner")));
  }
  const std::string key_hash = pki::Sha256Hex(spki);
  // One key, one owner: the certificate's subject owns its key.
  if (auto st = CheckKeyOwner(key_hash, pki::FormatName(X509_get_subject_name(cert.get())),
                              /*requester=*/"",
                              /*archiving=*/true, ours ? found->front().request_id : 0,
                              ours ? found->front().serial : std::string());
      !st.ok()) {
    if (!HResultOf(st)) return st;
    return refuse(st);
  }

  auto archived = archiver_->ArchiveKey(key.get(), X509_get0_pubkey(cert.get()));
  key.reset();
  if (!archived.ok()) return refuse(archived.status());

  ImportResult result;
  result.kra_sha1 = archived->kra_sha1;
  result.foreign = !ours;
  if (ours) {
    result.request_id = found->front().request_id;
    result.serial = found->front().serial;
    if (auto st = store_.AttachArchivedKey(result.request_id, *archived); !st.ok()) return st;
  } else {
    // Windows keeps foreign certificates in the CA database too: a new row,
    // marked by its template, that is never put on this CA's CRL.
    RequestRecord r;
    r.requester = who;
    r.template_name = kForeignTemplate;
    r.format = "pfx-import";
    r.raw = pki::CertificateDer(cert.get());
    r.subject = pki::FormatName(X509_get_subject_name(cert.get()));
    r.submitted_at = clock_();
    auto id = store_.InsertRequest(r);
    if (!id.ok()) return id.status();
    CertificateRecord record = CertificateRecordFor(cert.get(), *id, kForeignTemplate);
    if (auto st = store_.RecordIssued(*id, record, *archived, who, clock_()); !st.ok()) {
      (void)store_.ResolveRequest(*id, Disposition::kFailed, std::string(st.message()), 0, "system",
                                  clock_());
      return refuse(st);
    }
    result.request_id = *id;
    result.serial = record.serial;
  }
  metrics::Add(metrics::kArchivals, {{"source", "import"}});
  Audit(who, "archival.imported",
        json{{"request_id", result.request_id},
             {"serial", result.serial},
             {"foreign", result.foreign},
             {"kra_sha1", result.kra_sha1},
             {"scheme", archived->scheme}}
            .dump());
  return result;
}

absl::StatusOr<EnrollmentOutcome> CertificateAuthority::Approve(const std::string& officer,
                                                                int64_t request_id) {
  auto request = store_.GetRequest(request_id);
  if (!request.ok()) return request.status();
  if (request->disposition != Disposition::kPending) {
    return Error(hresult::kBadRequestStatus,
                 StrCat("request ", request_id, " is ", DispositionName(request->disposition)));
  }
  Audit(officer, "request.approved", json{{"request_id", request_id}}.dump());
  return Process(std::move(*request), officer, /*approving=*/true, /*submitted=*/nullptr);
}

absl::StatusOr<RequestRecord> CertificateAuthority::Deny(const std::string& officer,
                                                         int64_t request_id,
                                                         const std::string& reason) {
  auto request = store_.GetRequest(request_id);
  if (!request.ok()) return request.status();
  if (request->disposition != Disposition::kPending) {
    return Error(hresult::kBadRequestStatus,
                 StrCat("request ", request_id, " is ", DispositionName(request->disposition)));
  }
  const std::string message = reason.empty()
                                  ? "Denied by the Certificate Manager"
                                  : StrCat("Denied by the Certificate Manager: ", reason);
  // The denial, its audit record and (unless kept) the removal of the
  // archived key are one transaction.
  if (auto st = ResolveUnissued(*request, Disposition::kDenied, message, 0, officer,
                                {{officer, "request.denied",
                                  json{{"request_id", request_id}, {"reason", message}}.dump()}});
      !st.ok()) {
    return st;
  }
  return store_.GetRequest(request_id);
}

absl::StatusOr<CertificateRecord> CertificateAuthority::Revoke(const std::string& officer,
                                                               const std::string& serial,
                                                               int reason) {
  if (reason < 0 || reason > 10 || reason == 7) {
    return Error(hresult::kInvalidArg,
                 StrCat("revocation reason ", reason, " is not an RFC 5280 CRLReason (0-6, 8-10)"));
  }
  const std::string normalized = NormalizeSerial(serial);
  if (normalized.empty() || normalized.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return Error(hresult::kInvalidArg,
                 StrCat("\"", serial, "\" is not a hexadecimal serial number"));
  }
  if (auto existing = store_.GetCertificate(normalized);
      existing.ok() && existing->template_name == kForeignTemplate) {
    return Error(hresult::kInvalidArg,
                 StrCat("certificate ", normalized,
                        " was issued by another CA (imported for key archival); only its issuer "
                        "can revoke it"));
  }
  const int64_t revoked_at = clock_();
  if (auto st = store_.Revoke(normalized, reason, revoked_at); !st.ok()) return st;
  // Refused at the door from now on, whether or not the CRL gets made.
  trust_->AddOwnRevocations({{normalized, {revoked_at, reason}}});
  Audit(officer, "certificate.revoked", json{{"serial", normalized}, {"reason", reason}}.dump());
  // A configured KRA of this CA: re-validate the registry now, so the next
  // archival never goes to it (no reload or restart needed).
  if (kras_->IsConfiguredKraOfThisCa(normalized)) {
    Audit(officer, "kra.revoked", json{{"serial", normalized}, {"reason", reason}}.dump());
    kras_->Load(StrCat(officer, " (revoked KRA certificate ", normalized, ")"));
  }
  if (auto crl = PublishCrl(officer); !crl.ok()) return crl.status();
  return store_.GetCertificate(normalized);
}

absl::Status CertificateAuthority::RefreshDoorRevocations() {
  const uint64_t mark = trust_->OwnRevocationsMark();
  auto revoked = store_.RevokedCertificates(clock_());
  if (!revoked.ok()) return revoked.status();
  auto carried = CarriedRevocations(store_);
  if (!carried.ok()) return carried.status();
  auto door = RevocationsOf(*carried);
  for (auto& [serial, r] : RevocationsOf(*revoked)) door.insert_or_assign(serial, r);
  trust_->ReplaceOwnRevocations(door, mark);
  return absl::OkStatus();
}

absl::StatusOr<CertificateRecord> CertificateAuthority::ReleaseHold(const std::string& officer,
                                                                    const std::string& serial) {
  const std::string normalized = NormalizeSerial(serial);
  if (normalized.empty() || normalized.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return Error(hresult::kInvalidArg,
                 StrCat("\"", Echo(serial, 128), "\" is not a hexadecimal serial number"));
  }
  // What the officer is told when the certificate cannot be released; the
  // store checks again under the row lock.
  auto existing = store_.GetCertificate(normalized);
  if (!existing.ok()) {
    if (absl::IsNotFound(existing.status())) {
      return Error(hresult::kNotFound,
                   StrCat("no certificate with serial ", normalized, " was issued by this CA"));
    }
    return existing.status();
  }
  auto refuse = [&](const CertificateRecord& c) {
    return Error(
        hresult::kBadRequestStatus,
        c.revoked ? StrCat("certificate ", normalized, " is revoked with reason ",
                           CrlReasonName(c.revocation_reason),
                           "; only a certificateHold can be released (unrevoked)")
                  : StrCat("certificate ", normalized,
                           " is not revoked; only a certificateHold can be released (unrevoked)"));
  };
  if (!existing->revoked || existing->revocation_reason != 6) return refuse(*existing);

  const uint64_t mark = trust_->OwnRevocationsMark();
  std::optional<CertificateRecord> before;
  absl::Status st = store_.Transact(
      StrCat("releasing the hold on certificate ", normalized),
      [&](Transaction& t) -> absl::Status {
        auto released = t.ReleaseHold(normalized);
        if (!released.ok()) return released.status();
        before = *released;
        auto audited = t.AppendAudit(
            {officer, "certificate.hold_released",
             json{{"serial", normalized}, {"held_since", released->revoked_at}}.dump()},
            clock_());
        return audited.status();
      });
  if (!st.ok()) {
    // Changed since it was read (released or revoked again meanwhile).
    if (absl::IsFailedPrecondition(st) && !IsDatabaseFault(st)) {
      auto now = store_.GetCertificate(normalized);
      if (now.ok()) return refuse(*now);
    }
    return st;
  }
  // Let in again at the door (unless revoked again since `mark`).
  trust_->ReleaseOwnRevocation(normalized, mark);
  // The next CRL no longer lists it; published now, like a revocation.
  if (auto crl = PublishCrl(officer); !crl.ok()) return crl.status();
  return store_.GetCertificate(normalized);
}

namespace {

constexpr char kCrlLease[] = "crl";
constexpr auto kCrlLeaseWait = std::chrono::seconds(30);

// Re-issue at half-life so relying parties never see a stale CRL.
bool CrlFresh(const std::optional<CrlInfo>& crl, int64_t now) {
  return crl && now < crl->this_update + (crl->next_update - crl->this_update) / 2;
}

}  // namespace

absl::Status CertificateAuthority::AdoptStoredCrlLocked(bool force) {
  const auto steady = std::chrono::steady_clock::now();
  if (!force && steady - crl_checked_ < std::chrono::seconds(1)) return absl::OkStatus();
  crl_checked_ = steady;
  auto saved = store_.GetSetting(kCrlSetting);
  if (!saved.ok()) return absl::IsNotFound(saved.status()) ? absl::OkStatus() : saved.status();
  auto j = json::parse(*saved, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(StrCat("setting ", kCrlSetting, " in the database is not JSON"));
  }
  CrlInfo info;
  info.der = pki::Base64Decode(j.value("der", ""));
  info.number = j.value("number", int64_t{0});
  info.this_update = j.value("this_update", int64_t{0});
  info.next_update = j.value("next_update", int64_t{0});
  if (info.der.empty() || (crl_ && info.number <= crl_->number)) return absl::OkStatus();
  // Published by another replica, perhaps after a revocation (or the
  // release of a hold) made there: the door here follows the database.
  if (auto st = RefreshDoorRevocations(); !st.ok()) return st;
  crl_ = std::move(info);
  return absl::OkStatus();
}

void CertificateAuthority::TakeOverReplicaRevocations() {
  std::lock_guard<std::mutex> lock(crl_mu_);
  if (auto st = AdoptStoredCrlLocked(false); !st.ok()) {
    log::Warn("stored CRL not re-read", json{{"error", std::string(st.message())}});
  }
}

absl::StatusOr<CrlInfo> CertificateAuthority::CurrentCrl() {
  {
    std::lock_guard<std::mutex> lock(crl_mu_);
    if (auto st = AdoptStoredCrlLocked(false); !st.ok()) {
      // The database is away: the CRL this replica has is still valid to
      // serve (re-issuing, below, needs the database anyway).
      log::Warn("stored CRL not re-read", json{{"error", std::string(st.message())}});
    }
    if (CrlFresh(crl_, clock_())) return *crl_;
  }
  const auto deadline = std::chrono::steady_clock::now() + kCrlLeaseWait;
  for (;;) {
    auto lease = ScopedLease::TryTake(store_, kCrlLease, clock_());
    if (!lease.ok()) return lease.status();
    std::lock_guard<std::mutex> lock(crl_mu_);
    if (auto st = AdoptStoredCrlLocked(true); !st.ok()) return st;
    const int64_t now = clock_();
    if (CrlFresh(crl_, now)) return *crl_;  // another replica re-issued it meanwhile
    if (*lease) return PublishCrlLocked("system");
    // Another replica is publishing: the newest stays valid until nextUpdate.
    if (crl_ && now < crl_->next_update) return *crl_;
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::UnavailableError(
          StrCat("no valid CRL: another replica has held the publication lease \"", kCrlLease,
                 "\" for ", kCrlLeaseWait.count(), " s without publishing one"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

absl::StatusOr<CrlInfo> CertificateAuthority::PublishCrl(const std::string& who) {
  auto lease = ScopedLease::Take(store_, kCrlLease, clock_, kCrlLeaseWait);
  if (!lease.ok()) return lease.status();
  if (!*lease) {
    return absl::UnavailableError(StrCat("CRL publication: another replica has held the lease \"",
                                         kCrlLease, "\" for ", kCrlLeaseWait.count(),
                                         " s; try again later"));
  }
  std::lock_guard<std::mutex> lock(crl_mu_);
  return PublishCrlLocked(who);
}

absl::StatusOr<CrlInfo> CertificateAuthority::PublishCrlLocked(const std::string& who) {
  const int64_t now = clock_();
  const uint64_t mark = trust_->OwnRevocationsMark();
  auto revoked = store_.RevokedCertificates(now);
  if (!revoked.ok()) return revoked.status();
  std::vector<RevokedEntry> entries;
  std::set<std::string> listed;
  for (const auto& r : *revoked) {
    entries.push_back({r.serial, r.revoked_at, r.revocation_reason});
    listed.insert(r.serial);
  }
  // Entries of a CRL published before a restore whose certificates the
  // restored database does not hold: they stay listed (their expiry is not
  // known, so for good).
  auto carried = CarriedRevocations(store_);
  if (!carried.ok()) return carried.status();
  for (const auto& r : *carried) {
    if (listed.insert(r.serial).second) entries.push_back({r.serial, r.revoked_at, r.reason});
  }
  // The door refuses exactly what this CRL lists (and whatever was revoked
  // since the database was read).
  {
    auto door = RevocationsOf(*carried);
    for (auto& [serial, r] : RevocationsOf(*revoked)) door.insert_or_assign(serial, r);
    trust_->ReplaceOwnRevocations(door, mark);
  }
  // Derived from time (boulder's way) and above every number handed out or
  // carried over by a restore: never repeats, even after a restore.
  auto number = NextCrlNumber(store_, NowMicros());
  if (!number.ok()) return number.status();
  CrlInfo info;
  info.number = *number;
  info.this_update = now;
  info.next_update = now + config_.crl.validity.count();
  auto crl = issuer_->IssueCrl(entries, info.number, info.this_update, info.next_update);
  if (!crl.ok()) return crl.status();
  unsigned char* der = nullptr;
  int len = i2d_X509_CRL(crl->get(), &der);
  info.der.assign(der, der + std::max(len, 0));
  OPENSSL_free(der);
  if (auto st = store_.PutSetting(kCrlSetting, json{{"der", pki::Base64Encode(info.der)},
                                                    {"number", info.number},
                                                    {"this_update", info.this_update},
                                                    {"next_update", info.next_update}}
                                                   .dump());
      !st.ok()) {
    return st;
  }
  crl_ = info;
  metrics::Add(metrics::kSignatures, {{"kind", "crl"}});
  Audit(
      who, "crl.published",
      json{{"number", info.number}, {"entries", entries.size()}, {"next_update", info.next_update}}
          .dump());
  return info;
}

absl::StatusOr<ExchangeCertificate> CertificateAuthority::RenewExchange(const std::string& who) {
  auto x = exchange_->Renew(StrCat("requested by ", who));
  if (x.ok()) Audit(who, "exchange.renew_requested", json{{"serial", x->serial}}.dump());
  return x;
}

}  // namespace keywarden::service
