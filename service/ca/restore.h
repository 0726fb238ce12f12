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
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

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
  std::string database;
  std::string replaced;        // where the replaced database went; empty if there was none
  bool replaced_read = false;  // its revocations and CRL number were carried over
  std::vector<ReappliedRevocation> reapplied;
  int64_t crl_file_number = 0;  // 0 without --crl
  int64_t crl_number_floor = 0;
  int64_t audit_seq = 0;      // seq of the database.restored record
  int64_t audit_records = 0;  // of the restored database, verified after the restore
};

absl::StatusOr<RestoreReport> RestoreDatabase(const RestoreOptions& options);

}  // namespace keywarden::service
