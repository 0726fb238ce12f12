// Verifying the audit log against its signed checkpoints: the hash chain,
// every checkpoint's CA signature, that the chain passes through each, and
// (given the checkpoint an auditor exported earlier) that nothing the
// auditor has seen was removed or rewritten since.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "service/storage/store.h"

namespace keywarden::service {

struct AuditVerdict {
  bool ok = false;
  int64_t records = 0;
  int64_t head_seq = 0;       // the newest record's seq (0: none)
  int64_t checkpoints = 0;    // stored checkpoints, all verified when ok
  int64_t signed_seq = 0;     // seq the newest checkpoint vouches for (0: none)
  int64_t signed_number = 0;  // the newest checkpoint's number
  // Records after the newest checkpoint: chained, but no signature vouches
  // for them yet (appended since, or forged).
  int64_t unconfirmed = 0;
  std::string problem;  // when !ok: what is wrong, naming the first bad record or checkpoint
};

// `held`: the DER of a checkpoint exported earlier (keywarden audit
// checkpoint), trusted as far as its signature verifies with `ca`.
AuditVerdict VerifyAuditLog(const std::vector<AuditRecord>& records,
                            const std::vector<StoredCheckpoint>& checkpoints, X509* ca,
                            const std::optional<std::vector<uint8_t>>& held = std::nullopt);

// The same on a store, with its append-only triggers checked first.
// Errors only for what could not be read.
absl::StatusOr<AuditVerdict> VerifyStoredAudit(
    Store& store, X509* ca, const std::optional<std::vector<uint8_t>>& held = std::nullopt);

// One line for people: "audit log ok: ..." or "audit log BROKEN: ...".
std::string DescribeVerdict(const AuditVerdict& verdict);

}  // namespace keywarden::service
