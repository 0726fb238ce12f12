// keywarden restore (certutil -restoredb): puts a backup of the CA database
// in place of the current one, offline, without ever turning time back.
//
//  - refuses while keywardend holds the database (service/storage/db_lock.h);
//  - checks the backup (integrity, schema version, audit chain) and the
//    optional last published CRL (signed by the CA) before touching anything;
//  - re-applies every revocation the replaced database (and the CRL) knows
//    and the backup lacks, and raises the CRL number floor to the highest
//    number either has seen, so no CRL number is published twice;
//  - records database.restored in the restored audit log;
//  - never deletes the replaced database: it is renamed
//    "<db>.before-restore-<UTC time>" (0600); the new file is renamed in
//    atomically (temporary file in the same directory, fsync, rename, fsync).
//
// On PostgreSQL the checks and the work on the copy are the same (the
// "current database" read for revocations and CRL numbers is the
// PostgreSQL one); then:
//  - keywardend must not be running: restore holds the advisory lock
//    sql::kDaemonLock exclusively from start to end (every keywardend holds
//    it shared), and refuses "keywardend is running (N sessions ...)";
//  - the current contents are written first, with the PostgreSQL backup, to
//    "<keep_dir>/postgresql-before-restore-<UTC time>.db" (0600) and that
//    copy is verified; then the restored copy replaces the contents in one
//    transaction (ReplacePostgresContents in postgres_store.h), and the
//    result is read back: the audit chain verifies, the append-only
//    triggers are in place.
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/storage/postgres_store.h"
#include "service/storage/store.h"

namespace keywarden::service {

// A backup archive (`keywarden backup --with-config`): a directory holding
// the database copy, the configuration file and this manifest, which lists
// each file with its SHA-256.
inline constexpr char kBackupManifest[] = "manifest.json";
inline constexpr char kBackupManifestFormat[] = "keywarden-backup";
inline constexpr char kArchiveDatabase[] = "ca.db";
inline constexpr char kArchiveConfiguration[] = "keywarden.toml";

// SHA-256 (lower-case hex) and size of a file, read in pieces.
absl::StatusOr<std::string> FileSha256(const std::string& path, int64_t* bytes = nullptr);

// The schema version an SQLite file says it has (its header's user_version),
// without opening it as a database; an error for a file too short or not SQLite.
absl::StatusOr<int> SqliteFileSchemaVersion(const std::string& path);

struct RestoreOptions {
  // "sqlite": `database` is the file to replace. "postgresql": `postgres`
  // (connection, password) is the database whose contents are replaced and
  // `keep_dir` the directory for the copy of the replaced contents and for
  // the temporary copy of the backup.
  std::string backend = "sqlite";
  DatabaseOptions postgres;
  std::string keep_dir;
  // The backup: an SQLite copy made by `keywarden backup`, or an archive
  // directory made by `keywarden backup --with-config` (its manifest's
  // hashes are checked first).
  std::string backup;
  std::string database;  // [database] path: the file to replace (may not exist)
  // The last CRL the CA published (PEM or DER), or empty. Must verify
  // against `ca_certificate`.
  std::string crl_path;
  X509* ca_certificate = nullptr;  // the CA certificate of the configuration
  // Restore even when the current database cannot be read (its revocations
  // are then not carried over; it is still kept, renamed).
  bool discard_current = false;
  std::string principal;  // who, for the audit record
  int64_t now = 0;        // Unix time, seconds
};

struct ReappliedRevocation {
  std::string serial;
  int reason = 0;
  int64_t revoked_at = 0;
  std::string source;  // "replaced database" or "CRL"
  // "revoked" (in the backup, valid there), "inserted" (the certificate,
  // issued after the backup, copied revoked from the replaced database) or
  // "carried" (only its serial is known: kept on every CRL).
  std::string action;
};

struct RestoreReport {
  std::string archive;         // the archive directory, when one was given
  std::string archive_config;  // its configuration file (never installed by restore)
  std::string backup;
  std::string backup_sha256;
  int64_t backup_bytes = 0;
  int64_t backup_audit_records = 0;
  int64_t backup_last_seq = 0;
  std::string backup_last_hash;  // hex
  std::string backend;           // "sqlite" or "postgresql"
  std::string database;          // the file, or "PostgreSQL host=... dbname=..."
  // Where the replaced database went (SQLite: renamed; PostgreSQL: the
  // copy of its contents); empty if there was none.
  std::string replaced;
  bool replaced_read = false;  // its revocations and CRL number were carried over
  std::vector<ReappliedRevocation> reapplied;
  int64_t crl_file_number = 0;  // 0 without --crl
  int64_t crl_number_floor = 0;
  int64_t audit_seq = 0;      // seq of the database.restored record
  int64_t audit_records = 0;  // of the restored database, verified after the restore
  // PostgreSQL: the audit records of the replaced contents (in `replaced`,
  // verified) and what was loaded.
  int64_t replaced_audit_records = 0;
  PostgresReplaceReport loaded;
};

absl::StatusOr<RestoreReport> RestoreDatabase(const RestoreOptions& options);

}  // namespace keywarden::service
