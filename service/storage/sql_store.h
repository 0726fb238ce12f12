// The store's logic, written once over sql::Database: the row operations,
// the checks every write makes, the audit hash chain. A backend derives
// from SqlStore and adds its administration (schema, migrations, backup,
// trigger checks).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "service/storage/sql.h"
#include "service/storage/store.h"

namespace keywarden::service {

class SqlStore : public Store {
 public:
  absl::Status Transact(std::string_view what,
                        const std::function<absl::Status(Transaction&)>& fn) override;
  absl::Status Read(std::string_view what,
                    const std::function<absl::Status(Transaction&)>& fn) override;

  absl::StatusOr<int64_t> InsertRequest(const RequestRecord& request,
                                        const AuditFor& audit) override;
  absl::StatusOr<RequestRecord> GetRequest(int64_t id) override;
  absl::StatusOr<std::vector<RequestRecord>> ListRequests(std::optional<Disposition> disposition,
                                                          size_t limit) override;
  absl::StatusOr<std::vector<RequestRecord>> FindRequestsByKey(const std::string& spki_sha256,
                                                               size_t limit) override;
  absl::Status ResolveRequest(int64_t id, Disposition disposition, const std::string& message,
                              uint32_t status_code, const std::string& resolved_by, UnixTime at,
                              bool discard_archived_key,
                              const std::vector<AuditEntry>& audit) override;
  absl::Status RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                            const std::optional<ArchivedKey>& archived_key,
                            const std::string& resolved_by, UnixTime at,
                            const std::vector<AuditEntry>& audit) override;
  absl::Status AttachArchivedKey(int64_t id, const ArchivedKey& key) override;
  absl::StatusOr<int64_t> ReplaceArchivedKey(int64_t request_id,
                                             const std::vector<uint8_t>& expected,
                                             const std::vector<uint8_t>& envelope,
                                             const std::vector<std::string>& kra_sha1,
                                             const std::string& scheme,
                                             const std::string& replaced_by, UnixTime at,
                                             const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<ArchiveHistoryRecord>> ArchiveHistory(int64_t request_id) override;
  absl::Status SetPendingMessage(int64_t id, const std::string& message, UnixTime at,
                                 const std::vector<AuditEntry>& audit) override;

  absl::Status InsertCertificate(const CertificateRecord& certificate) override;
  absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial) override;
  absl::StatusOr<std::vector<CertificateRecord>> FindCertificates(
      const CertificateQuery& query) override;
  absl::Status Revoke(const std::string& serial, int reason, UnixTime at) override;
  absl::StatusOr<std::vector<CertificateRecord>> RevokedCertificates(UnixTime now) override;

  absl::Status PutSetting(const std::string& name, const std::string& value) override;
  absl::StatusOr<std::string> GetSetting(const std::string& name) override;
  absl::StatusOr<int64_t> NextCounter(const std::string& name) override;
  absl::StatusOr<bool> AcquireLease(const std::string& name, const std::string& holder,
                                    UnixTime now, int64_t ttl_seconds) override;
  absl::Status ReleaseLease(const std::string& name, const std::string& holder) override;

  absl::StatusOr<AuditRecord> AppendAudit(const std::string& principal, const std::string& event,
                                          const std::string& details_json, UnixTime at) override;
  absl::StatusOr<std::vector<AuditRecord>> ReadAudit(int64_t from_seq, size_t limit) override;
  absl::StatusOr<AuditRecord> LastAudit() override;
  absl::Status AppendAuditCheckpoint(const StoredCheckpoint& checkpoint) override;
  absl::StatusOr<std::vector<StoredCheckpoint>> ReadAuditCheckpoints() override;
  absl::StatusOr<StoredCheckpoint> LastAuditCheckpoint() override;

 protected:
  explicit SqlStore(std::unique_ptr<sql::Database> db) : db_(std::move(db)) {}
  sql::Database& database() { return *db_; }

 private:
  // Runs `fn` in a read transaction.
  absl::Status Read(std::string_view what, const std::function<absl::Status(sql::Session&)>& fn);

  std::unique_ptr<sql::Database> db_;
};

// Copies every row of every table of the CA schema from one database to
// another (an empty one of the same schema version): the backup of a
// PostgreSQL database into an SQLite file, a restore the other way. Rows
// keep their ids, seqs and order; the audit chain is copied as it is.
absl::Status CopyAllRows(sql::Session& from, sql::Session& to);

// SHA-256 (lower-case hex) of the DER SubjectPublicKeyInfo of a DER
// certificate; empty when it does not decode.
std::string SpkiSha256OfCertificate(const std::vector<uint8_t>& der);

}  // namespace keywarden::service
