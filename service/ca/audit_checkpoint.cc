// Signed audit checkpoints: the CA signs the head of the audit chain
// (periodically, at every clean stop and when an Auditor exports it), and
// the daemon refuses to start on an audit log that does not verify.
#include <cstdio>
#include <mutex>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/audit_checkpoint.h"
#include "service/ca/authority.h"
#include "service/observe/log.h"

namespace keywarden::service {
namespace {

// One checkpoint at a time (the periodic timer, the stop and an export may
// meet): checkpoint numbers are taken in order.
std::mutex checkpoint_mu;

}  // namespace

absl::Status CertificateAuthority::CheckAuditAtStart() {
  auto verdict = VerifyStoredAudit(store_, certificate());
  if (!verdict.ok()) {
    return absl::Status(verdict.status().code(),
                        StrCat("checking the audit log at start: ", verdict.status().message()));
  }
  if (verdict->ok) return absl::OkStatus();
  if (!config_.audit.accept_broken) {
    return absl::DataLossError(StrCat(
        "refusing to start: the audit log does not verify: ", verdict->problem,
        ". Find out what happened (keywarden audit verify --database ", config_.database.path,
        "; compare with a backup and with the checkpoint your auditor exported); to start anyway "
        "on this log, run keywardend with --accept-broken-audit (recorded in the audit log)"));
  }
  log::Warn("WARNING: starting on an audit log that does not verify (--accept-broken-audit)",
            nlohmann::json{{"problem", verdict->problem}});
  return AuditCommitted("system", "audit.broken_accepted",
                        nlohmann::json{{"problem", verdict->problem},
                                       {"records", verdict->records},
                                       {"head_seq", verdict->head_seq},
                                       {"signed_seq", verdict->signed_seq},
                                       {"flag", "--accept-broken-audit"}}
                            .dump(),
                        "starting on an audit log that does not verify");
}

absl::StatusOr<StoredCheckpoint> CertificateAuthority::CheckpointAudit() {
  std::lock_guard<std::mutex> lock(checkpoint_mu);
  auto head = store_.LastAudit();
  if (!head.ok()) return head.status();
  auto last = store_.LastAuditCheckpoint();
  if (!last.ok() && !absl::IsNotFound(last.status())) return last.status();
  if (last.ok() && last->seq == head->seq) return last;

  pki::AuditCheckpointBody body;
  body.number = last.ok() ? last->number + 1 : 1;
  body.seq = head->seq;
  body.hash = head->hash;
  body.time = clock_();
  if (last.ok()) body.previous = pki::AuditCheckpointDigest(last->der);
  // Signed with the CA key on the token; BuildAuditCheckpoint verifies the
  // signature with the CA certificate before anything is stored.
  auto der = pki::BuildAuditCheckpoint(issuer_->libctx(), issuer_->properties(),
                                       issuer_->signing_key(), certificate(), body);
  if (!der.ok()) {
    return absl::Status(der.status().code(),
                        StrCat("signing audit checkpoint ", body.number, " (seq ", body.seq,
                               "): ", der.status().message()));
  }
  StoredCheckpoint checkpoint{body.number, body.seq, std::move(*der)};
  if (auto st = store_.AppendAuditCheckpoint(checkpoint); !st.ok()) return st;
  return checkpoint;
}

absl::StatusOr<AuditVerdict> CertificateAuthority::VerifyAudit(
    const std::optional<std::vector<uint8_t>>& held) {
  return VerifyStoredAudit(store_, certificate(), held);
}

}  // namespace keywarden::service
