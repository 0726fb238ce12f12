// The CA database. One interface, two backends: SQLite (embedded, the
// default) and PostgreSQL (several keywardend replicas on one database).
// The store's logic is written once (sql_store.cc) over a backend-neutral
// SQL layer (sql.h); the same store tests run on both backends.
//
// Every state change and its audit record commit together or not at all:
// the compound methods below (RecordIssued stores the issued certificate,
// the request's final disposition, the encrypted key and the audit records
// in one transaction) and, for anything else, Transact: a unit of work of
// row operations and audit appends that commits as one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"

namespace keywarden::service {

// Unix time, seconds.
using UnixTime = int64_t;

// Request disposition, as certutil -view shows it.
enum class Disposition {
  kPending = 9,  // "Taken Under Submission": waits for a Certificate Manager
  kIssued = 20,  // "Issued"
  kDenied = 31,  // "Denied" by policy or by a Certificate Manager
  kFailed = 30,  // "Error": something went wrong while processing
};
const char* DispositionName(Disposition d);  // "pending", "issued", "denied", "failed"

// The encrypted private key of an archival request (filled by the archival
// pipeline): a DER CMS EnvelopedData plus what is needed to find the KRAs.
struct ArchivedKey {
  std::vector<uint8_t> envelope;            // CMS EnvelopedData (DER ContentInfo)
  std::string scheme;                       // "des3-rsa-pkcs1" or "aes256-rsa-oaep"
  std::vector<std::string> kra_sha1;        // SHA-1 thumbprints (hex) of the KRA certificates used
  std::vector<uint8_t> encrypted_key_hash;  // the request's 1.3.6.1.4.1.311.21.21 value
};

// An archive as it was before a KRA rollover replaced its recipients
// (keywarden kra rewrap): kept so that the old KRAs' envelope is never lost.
struct ArchiveHistoryRecord {
  int64_t request_id = 0;
  int64_t version = 0;  // 1 for the first envelope replaced, 2 for the next...
  UnixTime replaced_at = 0;
  std::string replaced_by;        // principal that submitted the rewrap
  std::vector<uint8_t> envelope;  // the envelope that was replaced
  std::string scheme;
  std::vector<std::string> kra_sha1;  // its KRAs
};

struct RequestRecord {
  int64_t id = 0;         // assigned by InsertRequest
  std::string requester;  // authenticated principal that submitted it
  std::string template_name;
  std::string format;        // "pkcs10", "cmc"
  std::vector<uint8_t> raw;  // the request exactly as received
  std::string subject;       // requested subject (RFC 4514), may be empty
  Disposition disposition = Disposition::kPending;
  std::string disposition_message;
  uint32_t status_code = 0;  // HRESULT-style code when denied/failed, else 0
  UnixTime submitted_at = 0;
  UnixTime resolved_at = 0;  // 0 while pending
  std::string resolved_by;   // principal (officer) or "policy"
  std::string serial;        // serial (hex) of the issued certificate, when issued
  std::optional<ArchivedKey> archived_key;
  // SHA-256 (lower-case hex) of the request's SubjectPublicKeyInfo DER,
  // when it was parsed that far; empty otherwise.
  std::string spki_sha256;
  // SHA-256 (lower-case hex) of the request as received (with the
  // encrypted key, which `raw` never keeps); empty for rows from before
  // schema 3 and for rows not made from a submission.
  std::string request_sha256;
};

struct CertificateRecord {
  std::string serial;      // lower-case hex of the serial number's magnitude, even length
  int64_t request_id = 0;  // 0 for certificates not issued from a request (CA's own)
  std::vector<uint8_t> der;
  std::string subject;  // RFC 4514
  std::string upn;      // the first UPN of the subjectAltName, when present
  std::string email;    // the first rfc822Name of the subjectAltName, when present
  std::string template_name;
  std::string sha1;  // hex thumbprint of the DER
  std::string sha256;
  UnixTime not_before = 0;
  UnixTime not_after = 0;
  bool revoked = false;
  int revocation_reason = 0;  // RFC 5280 CRLReason
  UnixTime revoked_at = 0;
  // SHA-256 (lower-case hex) of the SubjectPublicKeyInfo DER: computed by
  // the store from `der` (what a caller sets is ignored).
  std::string spki_sha256;
};

// Search for certificates (getkey's tokens, the CLI's view). Empty fields
// match everything; several set fields must all match.
struct CertificateQuery {
  std::string serial;
  std::string sha1;
  std::string subject_contains;  // case-insensitive substring of the subject
  std::string subject;           // exact subject (RFC 4514)
  std::string common_name;       // exact CN
  std::string upn;               // exact UPN
  std::string email;             // exact e-mail name (rfc822Name)
  int64_t request_id = 0;
  std::string spki_sha256;  // exact key hash (CertificateRecord::spki_sha256)
  bool only_with_archived_key = false;
  size_t limit = 1000;
};

struct AuditRecord {
  int64_t seq = 0;  // 1, 2, 3, ... assigned by AppendAudit
  UnixTime time = 0;
  std::string principal;           // who ("system" for the daemon itself)
  std::string event;               // e.g. "request.issued", "authz.refused"
  std::string details;             // JSON object text
  std::vector<uint8_t> prev_hash;  // hash of record seq-1 (32 zero bytes for seq 1)
  std::vector<uint8_t> hash;       // SHA-256 over this record's fields and prev_hash
};

// A signed audit checkpoint as stored (the CMS SignedData is made and
// checked by pki/audit_checkpoint.h; the store keeps it as given, with its
// number and the seq it vouches for so that seqs are never reused).
struct StoredCheckpoint {
  int64_t number = 0;  // 1, 2, 3, ...
  int64_t seq = 0;     // the audit record it signs
  std::vector<uint8_t> der;
};

// An audit record written in the same transaction as the state change it
// records: either both are stored or neither (one commit, one fsync).
struct AuditEntry {
  std::string principal;
  std::string event;
  std::string details_json;
};
// The audit records for a request whose id is only known once inserted.
using AuditFor = std::function<std::vector<AuditEntry>(int64_t request_id)>;

// SHA-256 of an audit record's canonical encoding (seq, time, principal,
// event, details, prev_hash; each length-prefixed). Backends must use this.
std::vector<uint8_t> AuditHash(const AuditRecord& record);

// Checks a run of audit records read in seq order from the start: every
// hash recomputes, every prev_hash is the previous record's hash, seqs are
// 1..n without gaps. The error names the first bad record and what is wrong
// (edited, deleted/missing, reordered).
absl::Status VerifyAuditChain(const std::vector<AuditRecord>& records);

// A failure of the database itself (disk full, I/O error, locked, read-only,
// corrupt, cannot open), as opposed to a refusal the data earns (a unique
// key taken). Backends mark these statuses with this payload; the RPC layer
// answers them UNAVAILABLE "database unavailable: ..." and the CA never
// records a request as denied for one: it is the CA's fault, not the
// client's.
inline constexpr char kDatabaseFaultPayload[] = "type.keywarden/database-fault";
inline absl::Status MarkDatabaseFault(absl::Status status) {
  if (!status.ok()) status.SetPayload(kDatabaseFaultPayload, absl::Cord("1"));
  return status;
}
inline bool IsDatabaseFault(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kDatabaseFaultPayload).has_value();
}

// disposition_message of a request being processed (see SetPendingMessage).
inline constexpr char kRequestInProcess[] = "In process";

// Row operations inside one unit of work (Store::Transact): nothing is
// visible to anyone else until the unit of work commits, and on an error
// nothing of it is kept. The operations mean what the Store methods of the
// same name mean.
class Transaction {
 public:
  virtual ~Transaction() = default;

  virtual absl::StatusOr<int64_t> InsertRequest(const RequestRecord& request) = 0;
  // Reads the request and, on PostgreSQL, locks its row until the end of
  // the unit of work.
  virtual absl::StatusOr<RequestRecord> GetRequest(int64_t id) = 0;
  virtual absl::StatusOr<std::vector<RequestRecord>> FindRequestsByKey(
      const std::string& spki_sha256, size_t limit) = 0;
  virtual absl::Status ResolveRequest(int64_t id, Disposition disposition,
                                      const std::string& message, uint32_t status_code,
                                      const std::string& resolved_by, UnixTime at,
                                      bool discard_archived_key) = 0;
  virtual absl::Status RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                                    const std::optional<ArchivedKey>& archived_key,
                                    const std::string& resolved_by, UnixTime at) = 0;
  virtual absl::Status AttachArchivedKey(int64_t request_id, const ArchivedKey& key) = 0;
  virtual absl::Status SetPendingMessage(int64_t request_id, const std::string& message) = 0;
  // KRA rollover: the archived key of request `request_id` gets `envelope`,
  // `kra_sha1` and `scheme` (empty: the scheme is kept; a threshold rewrap
  // changes "...-threshold-KofN"); the envelope it had goes to the archive
  // history with its scheme and KRAs.
  // FAILED_PRECONDITION (nothing written) unless it holds exactly
  // `expected` (someone else rewrapped it meanwhile). Returns the history
  // version written.
  virtual absl::StatusOr<int64_t> ReplaceArchivedKey(
      int64_t request_id, const std::vector<uint8_t>& expected,
      const std::vector<uint8_t>& envelope, const std::vector<std::string>& kra_sha1,
      const std::string& scheme, const std::string& replaced_by, UnixTime at) = 0;
  virtual absl::Status InsertCertificate(const CertificateRecord& certificate) = 0;
  virtual absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial) = 0;
  virtual absl::StatusOr<std::vector<CertificateRecord>> FindCertificates(
      const CertificateQuery& query) = 0;
  // The certificates of one public key (SPKI SHA-256, as the store computes
  // it), oldest first, at most `limit`, with what the one-key-one-owner
  // check needs of each and of its request, in one query (no certificate
  // or request bodies).
  struct KeyHolder {
    std::string serial;
    int64_t request_id = 0;  // 0: the CA's own certificate
    std::string subject;
    std::string template_name;
    std::string requester;  // of the request; empty without one
    bool archived = false;  // the request holds an archived key
  };
  // One row per kind of holder: certificates of the key grouped by
  // everything the owner check decides on (this CA's own certificate or
  // not, whether the request is `exclude_request`, subject, template,
  // requester, archived), each named by its earliest certificate (serial
  // and request), earliest kind first. However often a key was certified to
  // its one owner, that is one or two rows, so neither a long history nor
  // `limit` can hide an archived or foreign holder. `exclude_serial`'s
  // certificate is left out.
  virtual absl::StatusOr<std::vector<KeyHolder>> FindKeyHolders(const std::string& spki_sha256,
                                                                int64_t exclude_request,
                                                                const std::string& exclude_serial,
                                                                size_t limit) = 0;
  // Pending requests (left for a Certificate Manager) that hold `spki`'s
  // private key archived: their ids and requesters only, oldest first.
  struct PendingArchive {
    int64_t request_id = 0;
    std::string requester;
  };
  virtual absl::StatusOr<std::vector<PendingArchive>> FindPendingArchives(
      const std::string& spki_sha256, int64_t exclude_request, size_t limit) = 0;
  virtual absl::Status Revoke(const std::string& serial, int reason, UnixTime at) = 0;
  // Releases a certificateHold (RFC 5280 CRLReason 6; certutil -revoke
  // SERIAL Unrevoke): the certificate is no longer revoked. Reads and locks
  // the row first: NOT_FOUND for an unknown serial, FAILED_PRECONDITION
  // when it is not revoked or revoked for another reason (only a hold can
  // be released). Returns the row as it was before.
  virtual absl::StatusOr<CertificateRecord> ReleaseHold(const std::string& serial) = 0;
  virtual absl::Status PutSetting(const std::string& name, const std::string& value) = 0;
  virtual absl::StatusOr<std::string> GetSetting(const std::string& name) = 0;
  virtual absl::StatusOr<int64_t> NextCounter(const std::string& name) = 0;
  virtual absl::StatusOr<AuditRecord> AppendAudit(const AuditEntry& entry, UnixTime at) = 0;
  // Serializes the rest of this unit of work with every other one (in any
  // process, on any replica) that locks the same name: e.g. "key:<spki
  // hash>" around the one-key-one-owner check and the issuance it allows.
  virtual absl::Status Lock(std::string_view name) = 0;
};

// The administration of a backend: what `keywarden schema`, `backup` and
// the start-up checks need, which differs between SQLite and PostgreSQL.
class StoreAdmin {
 public:
  virtual ~StoreAdmin() = default;
  virtual const char* BackendName() const = 0;  // "SQLite", "PostgreSQL"
  // The schema as SQL (what `keywarden schema` prints, like certutil -schema).
  virtual std::string Schema() = 0;
  virtual int SchemaVersion() = 0;
  // A consistent copy of the whole database at `path`, an SQLite file of
  // this schema version whatever the backend (VerifySqliteCopy checks it,
  // restore reads it), while the CA keeps running; refuses to overwrite an
  // existing file.
  virtual absl::Status Backup(const std::string& path) = 0;
  // OK when the triggers that keep the audit log and its checkpoints
  // append-only are present and unchanged; DATA_LOSS naming the ones that
  // are missing or altered otherwise (they are not restored: someone with
  // write access to the database removed them, which the operator must see).
  virtual absl::Status CheckAuditTriggers() = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Runs `fn` as one unit of work: commits when it returns OK, keeps
  // nothing otherwise. `fn` may run more than once (PostgreSQL reruns a
  // unit of work that lost a serialization conflict or its connection
  // before committing), so it acts only through the Transaction.
  virtual absl::Status Transact(std::string_view what,
                                const std::function<absl::Status(Transaction&)>& fn) = 0;
  // Runs `fn`, which only reads, on a consistent snapshot of what is
  // committed. On SQLite it does not wait for a write's commit to reach the
  // disk (its own connection, in WAL mode); a write through the Transaction
  // fails. Like Transact, `fn` may run more than once.
  virtual absl::Status Read(std::string_view what,
                            const std::function<absl::Status(Transaction&)>& fn) = 0;
  virtual StoreAdmin& admin() = 0;

  // -- requests
  // `audit`, when given, makes the records appended atomically with the row
  // (timed at request.submitted_at).
  virtual absl::StatusOr<int64_t> InsertRequest(const RequestRecord& request,
                                                const AuditFor& audit = nullptr) = 0;
  virtual absl::StatusOr<RequestRecord> GetRequest(int64_t id) = 0;
  // Newest first; `disposition` filters when set.
  virtual absl::StatusOr<std::vector<RequestRecord>> ListRequests(
      std::optional<Disposition> disposition, size_t limit) = 0;
  // Requests whose spki_sha256 is this one (any disposition), oldest first;
  // none for an empty hash.
  virtual absl::StatusOr<std::vector<RequestRecord>> FindRequestsByKey(
      const std::string& spki_sha256, size_t limit) = 0;
  // Pending -> denied or failed. FAILED_PRECONDITION if the request is not
  // pending. `discard_archived_key` removes the archived key the request
  // holds (a pended archival request denied or failed: seed, "Denied ...
  // requests will also not archive private keys"), and `audit` is appended
  // (timed `at`), both in the same transaction. Nothing is written on error.
  virtual absl::Status ResolveRequest(int64_t id, Disposition disposition,
                                      const std::string& message, uint32_t status_code,
                                      const std::string& resolved_by, UnixTime at,
                                      bool discard_archived_key = false,
                                      const std::vector<AuditEntry>& audit = {}) = 0;
  // Pending -> issued, atomically with inserting the certificate and, when
  // given, the archived key. FAILED_PRECONDITION if the request is not
  // pending; ALREADY_EXISTS if the serial is taken. `audit` is appended in
  // the same transaction (timed `at`). Nothing is written on error.
  virtual absl::Status RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                                    const std::optional<ArchivedKey>& archived_key,
                                    const std::string& resolved_by, UnixTime at,
                                    const std::vector<AuditEntry>& audit = {}) = 0;

  // Attaches an archived key to a pending request (archival happens at
  // submission, so a request waiting for a Certificate Manager holds its key
  // encrypted to KRAs, never to the CA) or to an issued one (manual
  // archival). FAILED_PRECONDITION unless pending/issued without one.
  virtual absl::Status AttachArchivedKey(int64_t request_id, const ArchivedKey& key) = 0;
  // Sets the message of a pending request (it stays pending), with `audit`
  // appended in the same transaction (timed `at`). Processing marks a new
  // request kRequestInProcess at insertion and "Taken Under Submission"
  // when it is left for a Certificate Manager: a request still marked in
  // process at start was interrupted by a crash. FAILED_PRECONDITION if the
  // request is not pending.
  virtual absl::Status SetPendingMessage(int64_t request_id, const std::string& message,
                                         UnixTime at, const std::vector<AuditEntry>& audit) = 0;

  // -- certificates
  // A certificate not tied to a request (the CA's own, exchange certificates).
  // KRA rollover (Transaction::ReplaceArchivedKey) with `audit` appended in
  // the same transaction (timed `at`).
  virtual absl::StatusOr<int64_t> ReplaceArchivedKey(int64_t request_id,
                                                     const std::vector<uint8_t>& expected,
                                                     const std::vector<uint8_t>& envelope,
                                                     const std::vector<std::string>& kra_sha1,
                                                     const std::string& scheme,
                                                     const std::string& replaced_by, UnixTime at,
                                                     const std::vector<AuditEntry>& audit) = 0;
  // The envelopes a request's archive had before each rewrap, oldest first.
  virtual absl::StatusOr<std::vector<ArchiveHistoryRecord>> ArchiveHistory(int64_t request_id) = 0;

  virtual absl::Status InsertCertificate(const CertificateRecord& certificate) = 0;
  virtual absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial) = 0;
  virtual absl::StatusOr<std::vector<CertificateRecord>> FindCertificates(
      const CertificateQuery& query) = 0;
  // NOT_FOUND for an unknown serial; FAILED_PRECONDITION if already revoked.
  virtual absl::Status Revoke(const std::string& serial, int reason, UnixTime at) = 0;
  // Revoked certificates that have not expired before `now` (for the CRL).
  virtual absl::StatusOr<std::vector<CertificateRecord>> RevokedCertificates(UnixTime now) = 0;

  // -- settings: small named values the CA keeps (CRL number, exchange
  // certificate serials, ...). NOT_FOUND when unset.
  virtual absl::Status PutSetting(const std::string& name, const std::string& value) = 0;
  virtual absl::StatusOr<std::string> GetSetting(const std::string& name) = 0;
  // Atomically increments an integer setting (starting from 0) and returns the new value.
  virtual absl::StatusOr<int64_t> NextCounter(const std::string& name) = 0;

  // -- leases: work that exactly one replica of a cluster does at a time
  // (renewing the exchange key, publishing the CRL). Takes lease `name` for
  // `holder` until `now + ttl_seconds` when it is free, expired or already
  // `holder`'s (which renews it); true when `holder` has it afterwards. The
  // check and the write are one transaction, so two replicas never both
  // get it.
  virtual absl::StatusOr<bool> AcquireLease(const std::string& name, const std::string& holder,
                                            UnixTime now, int64_t ttl_seconds) = 0;
  // Gives the lease up early when `holder` has it (a no-op otherwise).
  virtual absl::Status ReleaseLease(const std::string& name, const std::string& holder) = 0;

  // -- audit log (append-only, hash-chained)
  virtual absl::StatusOr<AuditRecord> AppendAudit(const std::string& principal,
                                                  const std::string& event,
                                                  const std::string& details_json, UnixTime at) = 0;
  // Records with seq >= from_seq, in seq order, at most `limit`.
  virtual absl::StatusOr<std::vector<AuditRecord>> ReadAudit(int64_t from_seq, size_t limit) = 0;
  // The newest audit record (highest seq); NOT_FOUND when there is none.
  virtual absl::StatusOr<AuditRecord> LastAudit() = 0;
  // Stores a signed checkpoint (append-only). ALREADY_EXISTS for a number
  // that is taken.
  virtual absl::Status AppendAuditCheckpoint(const StoredCheckpoint& checkpoint) = 0;
  // Every stored checkpoint, by number.
  virtual absl::StatusOr<std::vector<StoredCheckpoint>> ReadAuditCheckpoints() = 0;
  // The one with the highest number; NOT_FOUND when there is none.
  virtual absl::StatusOr<StoredCheckpoint> LastAuditCheckpoint() = 0;
};

// Every audit record, in seq order.
absl::StatusOr<std::vector<AuditRecord>> ReadAllAudit(Store& store);

// Opens the database `config` names (Config::Database: backend "sqlite"
// with a path, or "postgresql" with a connection string and a password
// source), creating and migrating its schema.
struct DatabaseOptions {
  std::string backend = "sqlite";  // "sqlite" or "postgresql"
  std::string path;                // sqlite
  std::string connection;          // postgresql: libpq connection string (no password)
  std::string password;            // postgresql: the password itself, already read
  int pool_size = 8;               // postgresql
  // postgresql: create the schema in an empty database (keywardend); when
  // false (--check-config, which writes nothing) an empty database is
  // NOT_FOUND "has no keywarden schema yet".
  bool create_schema = true;
  ~DatabaseOptions();  // wipes the password
};
absl::StatusOr<std::unique_ptr<Store>> OpenStore(const DatabaseOptions& options);

// Opens (creating if needed) an SQLite database: WAL mode, foreign keys on,
// schema migrated to the current version inside a transaction. A database
// with a newer schema version than this build knows is refused.
absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);

// Reads the file a backup was written to (Store::Backup) for streaming: at
// most `chunk_size` bytes at a time go to `sink`. Fails closed: INTERNAL
// when the file cannot be opened or read, is empty, or yields another
// number of bytes than its size; CANCELLED when `sink` returns false.
// Returns the SHA-256 (lower-case hex) of everything passed to `sink`.
absl::StatusOr<std::string> StreamBackupFile(const std::string& path, size_t chunk_size,
                                             const std::function<bool(std::string_view)>& sink);

// Checks a copy of a CA database (a backup) without creating or migrating
// anything: an existing regular file, an SQLite database with keywarden's
// application id and this build's schema version, intact (PRAGMA
// quick_check), with at least one audit record and an audit chain that
// verifies. Returns the number of audit records; the error names what is
// wrong (FAILED_PRECONDITION for a file that is not a keywarden database,
// DATA_LOSS for a damaged one or a broken chain).
absl::StatusOr<int64_t> VerifySqliteCopy(const std::string& path);

}  // namespace keywarden::service
