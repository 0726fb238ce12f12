#include "service/storage/audit_checkpoints.h"

#include <map>

#include "hsm/strings.h"
#include "pki/audit_checkpoint.h"

namespace keywarden::service {
namespace {

AuditVerdict Broken(AuditVerdict v, std::string problem) {
  v.ok = false;
  v.problem = std::move(problem);
  return v;
}

// The record at `seq` in a chain that verified (seqs 1..n, in order).
const AuditRecord* RecordAt(const std::vector<AuditRecord>& records, int64_t seq) {
  if (seq < 1 || seq > static_cast<int64_t>(records.size())) return nullptr;
  return &records[static_cast<size_t>(seq - 1)];
}

// Checks that the chain passes through what checkpoint `name` vouches for.
std::optional<std::string> ChainMeets(const std::vector<AuditRecord>& records,
                                      const pki::AuditCheckpointBody& body,
                                      const std::string& name) {
  const int64_t head = records.empty() ? 0 : records.back().seq;
  if (body.seq > head) {
    return StrCat("the newest record is seq ", head, " but ", name, " vouches for seq ", body.seq,
                  ": records ", head + 1, "..", body.seq, " were removed (the log was truncated)");
  }
  const AuditRecord* at = RecordAt(records, body.seq);
  if (at == nullptr || at->hash != body.hash) {
    return StrCat("record seq ", body.seq, " has hash ", at ? HexString(at->hash) : "(none)",
                  " but ", name, " signed ", HexString(body.hash), ": records up to seq ", body.seq,
                  " were rewritten (chain recomputed)");
  }
  return std::nullopt;
}

}  // namespace

AuditVerdict VerifyAuditLog(const std::vector<AuditRecord>& records,
                            const std::vector<StoredCheckpoint>& checkpoints, X509* ca,
                            const std::optional<std::vector<uint8_t>>& held) {
  AuditVerdict v;
  v.records = static_cast<int64_t>(records.size());
  v.head_seq = records.empty() ? 0 : records.back().seq;
  v.checkpoints = static_cast<int64_t>(checkpoints.size());

  if (absl::Status chain = VerifyAuditChain(records); !chain.ok()) {
    return Broken(v, std::string(chain.message()));
  }
  std::vector<uint8_t> previous_digest;
  int64_t previous_seq = 0;
  std::map<int64_t, std::vector<uint8_t>> by_number;
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    const StoredCheckpoint& c = checkpoints[i];
    const int64_t expected = static_cast<int64_t>(i) + 1;
    const std::string name = StrCat("checkpoint ", c.number);
    if (c.number != expected) {
      return Broken(v, StrCat("checkpoint ", expected,
                              " is missing (deleted?); the next stored is ", c.number));
    }
    auto body = pki::ParseAuditCheckpoint(c.der, ca);
    if (!body.ok()) return Broken(v, StrCat(name, ": ", body.status().message()));
    if (body->number != c.number || body->seq != c.seq) {
      return Broken(v, StrCat(name, " (stored as number ", c.number, ", seq ", c.seq,
                              ") is signed as number ", body->number, ", seq ", body->seq,
                              ": moved or replaced"));
    }
    if (body->previous != previous_digest) {
      return Broken(v, StrCat(name, " does not follow checkpoint ", c.number - 1,
                              " (its 'previous' digest differs): a checkpoint was replaced"));
    }
    if (body->seq < previous_seq) {
      return Broken(v, StrCat(name, " vouches for seq ", body->seq, ", before checkpoint ",
                              c.number - 1, " (seq ", previous_seq, ")"));
    }
    if (auto problem = ChainMeets(records, *body, name)) return Broken(v, *problem);
    previous_digest = pki::AuditCheckpointDigest(c.der);
    previous_seq = body->seq;
    by_number[c.number] = c.der;
    v.signed_seq = body->seq;
    v.signed_number = body->number;
  }
  if (held) {
    auto body = pki::ParseAuditCheckpoint(*held, ca);
    if (!body.ok()) {
      return Broken(v,
                    StrCat("the checkpoint you hold does not verify: ", body.status().message()));
    }
    const std::string name = StrCat("your checkpoint ", body->number);
    auto stored = by_number.find(body->number);
    if (stored == by_number.end()) {
      return Broken(
          v, StrCat(name, " (seq ", body->seq, ") is not in the database, whose newest is ",
                    v.signed_number, ": checkpoints were removed (and the records after them?)"));
    }
    if (stored->second != *held) {
      return Broken(v, StrCat(name, " differs from the stored checkpoint ", body->number,
                              ": the stored one was replaced"));
    }
    if (auto problem = ChainMeets(records, *body, name)) return Broken(v, *problem);
  }
  v.unconfirmed = v.head_seq - v.signed_seq;
  v.ok = true;
  return v;
}

absl::StatusOr<AuditVerdict> VerifyStoredAudit(Store& store, X509* ca,
                                               const std::optional<std::vector<uint8_t>>& held) {
  absl::Status triggers = store.admin().CheckAuditTriggers();
  if (!triggers.ok() && !absl::IsDataLoss(triggers)) return triggers;
  auto records = ReadAllAudit(store);
  if (!records.ok()) return records.status();
  auto checkpoints = store.ReadAuditCheckpoints();
  if (!checkpoints.ok()) return checkpoints.status();
  AuditVerdict v = VerifyAuditLog(*records, *checkpoints, ca, held);
  if (v.ok && !triggers.ok()) return Broken(v, std::string(triggers.message()));
  return v;
}

std::string DescribeVerdict(const AuditVerdict& v) {
  if (!v.ok) return StrCat("audit log BROKEN: ", v.problem);
  std::string out = StrCat("audit log ok: ", v.records, " record", v.records == 1 ? "" : "s", ", ",
                           v.checkpoints, " signed checkpoint", v.checkpoints == 1 ? "" : "s");
  if (v.checkpoints > 0) {
    out += StrCat(", the newest (", v.signed_number, ") vouches for seq ", v.signed_seq);
  }
  if (v.unconfirmed > 0) {
    out += StrCat("; ", v.unconfirmed, " record", v.unconfirmed == 1 ? "" : "s", " after seq ",
                  v.signed_seq, " not yet signed (unconfirmed)");
  }
  return out;
}

}  // namespace keywarden::service
