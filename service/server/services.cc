#include "service/server/services.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cstdio>

#include "hsm/secret.h"
#include "hsm/strings.h"
#include "service/bounded.h"
#include "service/errors.h"
#include "service/server/rpc.h"
#include "service/server/workers.h"

namespace keywarden::service {
namespace {

using grpc::ServerContext;
using grpc::Status;

#define KW_AUTHORIZE(method)                              \
  auto caller_or = Authorize(ca_, *context, method);      \
  if (!caller_or.ok()) return ToGrpc(caller_or.status()); \
  const Caller& caller = *caller_or;                      \
  (void)caller

// The same, and the request's fields checked against their length limits.
#define KW_AUTHORIZE_IN(method, in)                         \
  auto caller_or = Authorize(ca_, *context, method, *(in)); \
  if (!caller_or.ok()) return ToGrpc(caller_or.status());   \
  const Caller& caller = *caller_or;                        \
  (void)caller

std::string Bytes(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

void FillChain(X509* leaf, const std::vector<std::vector<uint8_t>>& chain,
               v1::CertificateChain* out) {
  out->set_certificate(Bytes(pki::CertificateDer(leaf)));
  for (const auto& c : chain) out->add_chain(Bytes(c));
}

void FillCrl(const CrlInfo& crl, v1::Crl* out) {
  out->set_crl(Bytes(crl.der));
  out->set_crl_number(crl.number);
  out->set_this_update(crl.this_update);
  out->set_next_update(crl.next_update);
}

Disposition FromProto(v1::Disposition d) {
  switch (d) {
    case v1::DISPOSITION_ISSUED:
      return Disposition::kIssued;
    case v1::DISPOSITION_DENIED:
      return Disposition::kDenied;
    case v1::DISPOSITION_FAILED:
      return Disposition::kFailed;
    default:
      return Disposition::kPending;
  }
}

// Submit (an archival: token operations and commits) runs on the callback
// API with workers of its own; on gRPC's synchronous server, which starts
// and ends threads under load, its p99 at 8 clients was 2.5 x higher
// (archival_bench, docs/DECISIONS.md). The other methods stay synchronous.
class EnrollmentService final
    : public v1::Enrollment::WithCallbackMethod_Submit<v1::Enrollment::Service> {
 public:
  explicit EnrollmentService(CertificateAuthority& ca)
      : ca_(ca),
        workers_(std::make_unique<Workers<UnaryCall<EnrollmentService>>>(
            ServiceWorkerCount(ca.config()))) {}

  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* context,
                                   const v1::SubmitRequest* in,
                                   v1::EnrollmentResult* out) override {
    return PostUnary<&EnrollmentService::SubmitOnWorker>(*workers_, *this, context, in, out);
  }

  Status GetCaCertificate(ServerContext* context, const v1::GetCaCertificateRequest*,
                          v1::CertificateChain* out) override {
    KW_AUTHORIZE("/keywarden.v1.Enrollment/GetCaCertificate");
    auto chain = ca_.ChainDer();
    out->set_certificate(Bytes(chain.front()));
    for (size_t i = 1; i < chain.size(); ++i) out->add_chain(Bytes(chain[i]));
    return Status::OK;
  }

  Status GetExchangeCertificate(ServerContext* context, const v1::GetExchangeCertificateRequest*,
                                v1::CertificateChain* out) override {
    KW_AUTHORIZE("/keywarden.v1.Enrollment/GetExchangeCertificate");
    auto x = ca_.CurrentExchange();
    if (!x.ok()) return ToGrpc(x.status());
    FillChain(x->certificate.get(), ca_.ChainDer(), out);
    return Status::OK;
  }

  Status SubmitOnWorker(const grpc::ServerContextBase& context, const v1::SubmitRequest& in,
                        v1::EnrollmentResult* out) {
    auto caller = Authorize(ca_, context, "/keywarden.v1.Enrollment/Submit", in);
    if (!caller.ok()) return ToGrpc(caller.status());
    const auto& raw = in.request();
    auto outcome = ca_.Submit(*caller, {reinterpret_cast<const uint8_t*>(raw.data()), raw.size()},
                              in.template_name());
    if (!outcome.ok()) return ToGrpc(outcome.status());
    Fill(*outcome, ca_.ChainDer(), out);
    return Status::OK;
  }

  Status Retrieve(ServerContext* context, const v1::RetrieveRequest* in,
                  v1::EnrollmentResult* out) override {
    KW_AUTHORIZE("/keywarden.v1.Enrollment/Retrieve");
    auto outcome =
        ca_.Retrieve(caller.principal, in->request_id(), caller.Has(Role::kCertificateManager));
    if (!outcome.ok()) return ToGrpc(outcome.status());
    Fill(*outcome, ca_.ChainDer(), out);
    return Status::OK;
  }

  Status GetCrl(ServerContext* context, const v1::GetCrlRequest*, v1::Crl* out) override {
    KW_AUTHORIZE("/keywarden.v1.Enrollment/GetCrl");
    auto crl = ca_.CurrentCrl();
    if (!crl.ok()) return ToGrpc(crl.status());
    FillCrl(*crl, out);
    return Status::OK;
  }

 private:
  CertificateAuthority& ca_;
  std::unique_ptr<Workers<UnaryCall<EnrollmentService>>> workers_;  // last: stopped first
};

class OfficerService final : public v1::Officer::Service {
 public:
  explicit OfficerService(CertificateAuthority& ca) : ca_(ca) {}

  Status ListRequests(ServerContext* context, const v1::ListRequestsRequest* in,
                      v1::ListRequestsResponse* out) override {
    KW_AUTHORIZE("/keywarden.v1.Officer/ListRequests");
    std::optional<Disposition> filter;
    if (in->disposition() != v1::DISPOSITION_UNSPECIFIED) filter = FromProto(in->disposition());
    const size_t limit = in->limit() > 0 ? static_cast<size_t>(in->limit()) : 100;
    auto list = ca_.store().ListRequests(filter, std::min<size_t>(limit, 10000));
    if (!list.ok()) return ToGrpc(list.status());
    for (const auto& r : *list) Fill(r, out->add_requests());
    return Status::OK;
  }

  Status GetRequest(ServerContext* context, const v1::GetRequestRequest* in,
                    v1::RequestInfo* out) override {
    KW_AUTHORIZE("/keywarden.v1.Officer/GetRequest");
    auto r = ca_.store().GetRequest(in->request_id());
    if (!r.ok()) return ToGrpc(r.status());
    Fill(*r, out);
    return Status::OK;
  }

  Status Approve(ServerContext* context, const v1::ApproveRequest* in,
                 v1::EnrollmentResult* out) override {
    KW_AUTHORIZE("/keywarden.v1.Officer/Approve");
    auto outcome = ca_.Approve(caller.principal, in->request_id());
    if (!outcome.ok()) return ToGrpc(outcome.status());
    Fill(*outcome, ca_.ChainDer(), out);
    return Status::OK;
  }

  Status Deny(ServerContext* context, const v1::DenyRequest* in, v1::RequestInfo* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/Deny", in);
    auto r = ca_.Deny(caller.principal, in->request_id(), in->reason());
    if (!r.ok()) return ToGrpc(r.status());
    Fill(*r, out);
    return Status::OK;
  }

  Status Revoke(ServerContext* context, const v1::RevokeRequest* in,
                v1::CertificateInfo* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/Revoke", in);
    auto c = ca_.Revoke(caller.principal, in->serial(), in->reason());
    if (!c.ok()) return ToGrpc(c.status());
    Fill(*c, out);
    return Status::OK;
  }

  Status ReleaseHold(ServerContext* context, const v1::ReleaseHoldRequest* in,
                     v1::CertificateInfo* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/ReleaseHold", in);
    auto c = ca_.ReleaseHold(caller.principal, in->serial());
    if (!c.ok()) return ToGrpc(c.status());
    Fill(*c, out);
    return Status::OK;
  }

  Status FindCertificates(ServerContext* context, const v1::FindCertificatesRequest* in,
                          v1::FindCertificatesResponse* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/FindCertificates", in);
    // An empty query is never "every certificate", nor is request id 0.
    if (in->request_id() < 0) {
      return ToGrpc(
          Error(hresult::kInvalidArg, StrCat("FindCertificatesRequest.request_id is ",
                                             in->request_id(), "; request ids start at 1")));
    }
    CertificateQuery q;
    q.serial = in->serial().empty() ? "" : NormalizeSerial(in->serial());
    q.sha1 = AsciiLower(in->sha1());
    q.common_name = in->common_name();
    q.upn = in->upn();
    q.email = in->email();
    q.subject_contains = in->subject_contains();
    q.request_id = in->request_id();
    // (after normalizing: a serial of only spaces and colons is no criterion)
    if (q.serial.empty() && q.sha1.empty() && q.common_name.empty() && q.upn.empty() &&
        q.email.empty() && q.subject_contains.empty() && q.request_id == 0) {
      return ToGrpc(Error(hresult::kInvalidArg,
                          "FindCertificatesRequest names no criterion: give at least one of "
                          "serial, sha1, common_name, upn, email, subject_contains, request_id "
                          "(1 or more)"));
    }
    q.limit = in->limit() > 0 ? std::min<size_t>(static_cast<size_t>(in->limit()), 10000) : 1000;
    auto found = ca_.store().FindCertificates(q);
    if (!found.ok()) return ToGrpc(found.status());
    for (const auto& c : *found) Fill(c, out->add_certificates());
    return Status::OK;
  }

  Status GetArchivedKey(ServerContext* context, const v1::GetArchivedKeyRequest* in,
                        v1::GetArchivedKeyResponse* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/GetArchivedKey", in);
    if (!in->blob() && in->history_version() != 0) {
      return ToGrpc(Error(hresult::kInvalidArg,
                          "GetArchivedKeyRequest.history_version is set without blob: it chooses "
                          "the envelope of the recovery blob"));
    }
    auto fill = [this, out, in](const CertificateAuthority::RecoveryCandidate& c) -> absl::Status {
      auto* k = out->add_candidates();
      Fill(c.certificate, k->mutable_certificate());
      k->set_request_id(c.request.id);
      k->set_requester(c.request.requester);
      for (const auto& sha1 : c.request.archived_key->kra_sha1) k->add_kra_sha1(sha1);
      k->set_scheme(c.request.archived_key->scheme);
      if (!in->history()) return absl::OkStatus();
      auto history = ca_.store().ArchiveHistory(c.request.id);
      if (!history.ok()) return history.status();
      for (const ArchiveHistoryRecord& h : *history) {
        auto* e = k->add_history();
        e->set_version(h.version);
        e->set_replaced_at(h.replaced_at);
        e->set_replaced_by(h.replaced_by);
        e->set_scheme(h.scheme);
        for (const auto& sha1 : h.kra_sha1) e->add_kra_sha1(sha1);
        unsigned char digest[SHA256_DIGEST_LENGTH];
        SHA256(h.envelope.data(), h.envelope.size(), digest);
        e->set_envelope_sha256(HexString(std::span<const uint8_t>(digest, sizeof digest)));
      }
      return absl::OkStatus();
    };
    if (!in->blob()) {
      std::vector<std::string> tried;
      auto found = ca_.FindArchivedKeys(in->search(), &tried);
      if (!found.ok()) return ToGrpc(found.status());
      for (const auto& c : *found) {
        if (auto st = fill(c); !st.ok()) return ToGrpc(st);
      }
      if (found->empty()) {
        for (const auto& t : tried) out->add_searched(Echo(t, 1024));
      }
      return Status::OK;
    }
    auto result = ca_.GetRecoveryBlob(caller.principal, in->search(), in->history_version());
    if (!result.ok()) return ToGrpc(result.status());
    if (auto st = fill(result->candidate); !st.ok()) return ToGrpc(st);
    out->set_recovery_blob(std::string(result->blob.begin(), result->blob.end()));
    if (in->rewrap_targets()) {
      out->set_rewrap_threshold(ca_.RewrapThreshold());
      for (const auto& cert : ca_.RewrapTargets().certificates) {
        unsigned char* der = nullptr;
        const int len = i2d_X509(cert.get(), &der);
        if (len <= 0) return ToGrpc(absl::InternalError("encoding a KRA certificate"));
        out->add_rewrap_kras(std::string(reinterpret_cast<char*>(der), static_cast<size_t>(len)));
        OPENSSL_free(der);
      }
    }
    return Status::OK;
  }

  Status RewrapArchivedKey(ServerContext* context, const v1::RewrapArchivedKeyRequest* in,
                           v1::RewrapArchivedKeyResponse* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Officer/RewrapArchivedKey", in);
    const std::vector<uint8_t> previous(in->previous_sha256().begin(), in->previous_sha256().end());
    const std::vector<uint8_t> envelope(in->enveloped_data().begin(), in->enveloped_data().end());
    auto r = ca_.RewrapArchivedKey(caller.principal, in->request_id(), previous, envelope);
    if (!r.ok()) return ToGrpc(r.status());
    out->set_request_id(r->request_id);
    for (const auto& sha1 : r->kra_sha1) out->add_kra_sha1(sha1);
    for (const auto& sha1 : r->previous_kra_sha1) out->add_previous_kra_sha1(sha1);
    out->set_history_version(r->history_version);
    out->set_scheme(r->scheme);
    return Status::OK;
  }

 private:
  CertificateAuthority& ca_;
};

class AdministrationService final : public v1::Administration::Service {
 public:
  explicit AdministrationService(CertificateAuthority& ca) : ca_(ca) {}

  Status GetCaStatus(ServerContext* context, const v1::GetCaStatusRequest*,
                     v1::CaStatus* out) override {
    KW_AUTHORIZE("/keywarden.v1.Administration/GetCaStatus");
    const Config& config = ca_.config();
    out->set_name(config.ca.name);
    out->set_subject(pki::FormatName(X509_get_subject_name(ca_.certificate())));
    out->set_sha1(pki::Sha1Thumbprint(ca_.certificate()));
    out->set_not_after(ToUnix(X509_get0_notAfter(ca_.certificate())));
    out->set_token(config.hsm.token);
    out->set_role_separation(config.flags.role_separation);
    out->set_schema_version(ca_.store().admin().SchemaVersion());
    auto current = ca_.CurrentExchange();
    for (const auto& x : ca_.ExchangeCertificates()) {
      auto* e = out->add_exchange();
      e->set_serial(x.serial);
      e->set_not_before(x.not_before);
      e->set_not_after(x.not_after);
      e->set_key_label(x.key_label);
      e->set_current(current.ok() && current->serial == x.serial);
    }
    for (const auto& t : config.templates) {
      auto* ti = out->add_templates();
      ti->set_name(t.name);
      ti->set_oid(t.oid);
      ti->set_pend(t.pend);
      ti->set_archival(t.archival == ArchivalPolicy::kRequired  ? "required"
                       : t.archival == ArchivalPolicy::kAllowed ? "allowed"
                                                                : "none");
      ti->set_validity_seconds(t.validity.count());
    }
    return Status::OK;
  }

  Status RenewExchangeCertificate(ServerContext* context,
                                  const v1::RenewExchangeCertificateRequest*,
                                  v1::CertificateChain* out) override {
    KW_AUTHORIZE("/keywarden.v1.Administration/RenewExchangeCertificate");
    auto x = ca_.RenewExchange(caller.principal);
    if (!x.ok()) return ToGrpc(x.status());
    FillChain(x->certificate.get(), ca_.ChainDer(), out);
    return Status::OK;
  }

  Status PublishCrl(ServerContext* context, const v1::PublishCrlRequest*, v1::Crl* out) override {
    KW_AUTHORIZE("/keywarden.v1.Administration/PublishCrl");
    auto crl = ca_.PublishCrl(caller.principal);
    if (!crl.ok()) return ToGrpc(crl.status());
    FillCrl(*crl, out);
    return Status::OK;
  }

  Status ListKeyRecoveryAgents(ServerContext* context, const v1::ListKeyRecoveryAgentsRequest*,
                               v1::KeyRecoveryAgents* out) override {
    KW_AUTHORIZE("/keywarden.v1.Administration/ListKeyRecoveryAgents");
    FillKras(ca_.KraStatuses(), out);
    return Status::OK;
  }

  Status ReloadKeyRecoveryAgents(ServerContext* context, const v1::ReloadKeyRecoveryAgentsRequest*,
                                 v1::KeyRecoveryAgents* out) override {
    KW_AUTHORIZE("/keywarden.v1.Administration/ReloadKeyRecoveryAgents");
    FillKras(ca_.ReloadKras(caller.principal), out);
    return Status::OK;
  }

  Status ImportArchivedKey(ServerContext* context, const v1::ImportArchivedKeyRequest* in,
                           v1::ImportArchivedKeyResponse* out) override {
    // The password is wiped from the request message (the server's own
    // copy, parsed for this call) however the call ends.
    struct WipeOnReturn {
      std::string* s;
      ~WipeOnReturn() {
        OPENSSL_cleanse(s->data(), s->size());
        s->clear();
      }
    } wipe{const_cast<v1::ImportArchivedKeyRequest*>(in)->mutable_password()};
    KW_AUTHORIZE_IN("/keywarden.v1.Administration/ImportArchivedKey", in);
    const hsm::SecretString password(in->password());
    auto result =
        ca_.ImportKey(caller.principal,
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(in->pfx().data()),
                                               in->pfx().size()),
                      password, in->foreign());
    if (!result.ok()) return ToGrpc(result.status());
    out->set_request_id(result->request_id);
    out->set_serial(result->serial);
    for (const auto& sha1 : result->kra_sha1) out->add_kra_sha1(sha1);
    out->set_foreign(result->foreign);
    for (const auto& k : result->keys) {
      auto* key = out->add_keys();
      key->set_subject(k.subject);
      key->set_serial(k.serial);
      key->set_archived(k.status.ok());
      key->set_request_id(k.request_id);
      for (const auto& sha1 : k.kra_sha1) key->add_kra_sha1(sha1);
      key->set_foreign(k.foreign);
      key->set_signature_only(k.signature_only);
      if (!k.status.ok()) {
        key->set_status_code(HResultOf(k.status).value_or(0));
        key->set_message(std::string(k.status.message()));
      }
    }
    return Status::OK;
  }

 private:
  void FillKras(const std::vector<KraStatus>& kras, v1::KeyRecoveryAgents* out) {
    for (const KraStatus& k : kras) {
      auto* a = out->add_agents();
      a->set_index(static_cast<uint32_t>(k.index));
      a->set_configured(k.configured);
      a->set_state(KraStateName(k.state));
      a->set_status_code(k.hresult);
      a->set_message(k.message);
      a->set_subject(k.subject);
      a->set_issuer(k.issuer);
      a->set_serial(k.serial);
      a->set_sha1(k.sha1);
      a->set_not_before(k.not_before);
      a->set_not_after(k.not_after);
      a->set_issued_by_this_ca(k.issued_by_this_ca);
    }
    out->set_per_archival(static_cast<uint32_t>(ca_.KrasPerArchival()));
    const absl::Status usable = ca_.KraUsable();
    out->set_archival_enabled(usable.ok());
    if (!usable.ok()) {
      out->set_archival_status(std::string(usable.message()));
      out->set_archival_status_code(HResultOf(usable).value_or(0));
    }
  }

  CertificateAuthority& ca_;
};

class AuditService final : public v1::Audit::Service {
 public:
  explicit AuditService(CertificateAuthority& ca) : ca_(ca) {}

  Status ReadAudit(ServerContext* context, const v1::ReadAuditRequest* in,
                   v1::ReadAuditResponse* out) override {
    KW_AUTHORIZE("/keywarden.v1.Audit/ReadAudit");
    const size_t limit =
        in->limit() > 0 ? std::min<size_t>(static_cast<size_t>(in->limit()), 10000) : 1000;
    auto records = ca_.store().ReadAudit(std::max<int64_t>(in->from_seq(), 1), limit);
    if (!records.ok()) return ToGrpc(records.status());
    for (const auto& r : *records) {
      auto* o = out->add_records();
      o->set_seq(r.seq);
      o->set_time(r.time);
      o->set_principal(r.principal);
      o->set_event(r.event);
      o->set_details(r.details);
      o->set_prev_hash(Bytes(r.prev_hash));
      o->set_hash(Bytes(r.hash));
    }
    return Status::OK;
  }

  Status VerifyAudit(ServerContext* context, const v1::VerifyAuditRequest* in,
                     v1::VerifyAuditResponse* out) override {
    KW_AUTHORIZE_IN("/keywarden.v1.Audit/VerifyAudit", in);
    std::optional<std::vector<uint8_t>> held;
    if (!in->checkpoint().empty()) held.emplace(in->checkpoint().begin(), in->checkpoint().end());
    auto verdict = ca_.VerifyAudit(held);
    if (!verdict.ok()) return ToGrpc(verdict.status());
    out->set_ok(verdict->ok);
    out->set_records(verdict->records);
    if (!verdict->ok) out->set_problem(verdict->problem);
    out->set_checkpoints(verdict->checkpoints);
    out->set_signed_seq(verdict->signed_seq);
    out->set_unconfirmed(verdict->unconfirmed);
    out->set_head_seq(verdict->head_seq);
    return Status::OK;
  }

  Status GetAuditCheckpoint(ServerContext* context, const v1::GetAuditCheckpointRequest*,
                            v1::GetAuditCheckpointResponse* out) override {
    KW_AUTHORIZE("/keywarden.v1.Audit/GetAuditCheckpoint");
    auto checkpoint = ca_.CheckpointAudit();
    if (!checkpoint.ok()) return ToGrpc(checkpoint.status());
    out->set_checkpoint(std::string(checkpoint->der.begin(), checkpoint->der.end()));
    out->set_number(checkpoint->number);
    out->set_seq(checkpoint->seq);
    return Status::OK;
  }

 private:
  CertificateAuthority& ca_;
};

class BackupService final : public v1::Backup::Service {
 public:
  explicit BackupService(CertificateAuthority& ca) : ca_(ca) {}

  Status BackupDatabase(ServerContext* context, const v1::BackupDatabaseRequest*,
                        grpc::ServerWriter<v1::BackupChunk>* writer) override {
    KW_AUTHORIZE("/keywarden.v1.Backup/BackupDatabase");
    char dir[] = "/tmp/keywarden-backup-XXXXXX";
    if (mkdtemp(dir) == nullptr)
      return ToGrpc(absl::InternalError("backup: no temporary directory"));
    const std::string path = StrCat(dir, "/ca.db");
    absl::Status result = ca_.store().admin().Backup(path);
    if (result.ok()) result = StreamCopy(path, caller.principal, writer);
    std::remove(path.c_str());
    rmdir(dir);
    return ToGrpc(result);
  }

 private:
  // Streams the copy just made, then its SHA-256. Fails closed: a copy the
  // daemon cannot open or read whole, a client that stops reading, or an
  // audit record that cannot be written is an error, never a success with
  // the checksum of something partial (StreamBackupFile).
  absl::Status StreamCopy(const std::string& path, const std::string& who,
                          grpc::ServerWriter<v1::BackupChunk>* writer) {
    uint64_t sent = 0;
    auto sha256 = StreamBackupFile(path, 64 * 1024, [&](std::string_view data) {
      v1::BackupChunk chunk;
      chunk.set_data(std::string(data));
      sent += data.size();
      return writer->Write(chunk);
    });
    if (!sha256.ok()) return sha256.status();
    v1::BackupChunk last;
    last.set_sha256(*sha256);
    // Audited before the checksum leaves: without it the client has no
    // complete backup.
    if (auto st =
            ca_.AuditCommitted(who, "backup.database",
                               StrCat("{\"sha256\":\"", last.sha256(), "\",\"bytes\":", sent, "}"),
                               "the backup was not completed");
        !st.ok()) {
      return st;
    }
    if (!writer->Write(last)) {
      return absl::CancelledError("backup: the client stopped reading before the checksum");
    }
    return absl::OkStatus();
  }

  CertificateAuthority& ca_;
};

}  // namespace

std::vector<std::unique_ptr<grpc::Service>> MakeServices(CertificateAuthority& ca) {
  std::vector<std::unique_ptr<grpc::Service>> out;
  out.push_back(std::make_unique<EnrollmentService>(ca));
  out.push_back(std::make_unique<OfficerService>(ca));
  out.push_back(std::make_unique<AdministrationService>(ca));
  out.push_back(std::make_unique<AuditService>(ca));
  out.push_back(std::make_unique<BackupService>(ca));
  return out;
}

}  // namespace keywarden::service
