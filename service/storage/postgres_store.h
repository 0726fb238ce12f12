// The PostgreSQL backend of the CA store (several keywardend replicas on one
// database).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "service/storage/store.h"

namespace keywarden::service {

// Connects (a bounded pool), creates the schema in an empty database or
// checks its version, under an advisory lock so replicas starting together
// do not race. Refuses a database holding tables of something else.
absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const DatabaseOptions& options);

// What ReplacePostgresContents did.
struct PostgresReplaceReport {
  int64_t requests = 0;  // rows loaded, per table
  int64_t certificates = 0;
  int64_t settings = 0;
  int64_t audit_records = 0;
  int64_t audit_checkpoints = 0;
  int64_t next_request_id = 0;  // what the requests id identity hands out next
  int64_t leases_dropped = 0;   // stale "lease.*" settings of the backup, not loaded
};

// `keywarden restore` on PostgreSQL: replaces the whole contents of the CA
// database with the rows of the SQLite file `sqlite_copy` (a verified copy
// of schema version kPostgresSchemaVersion), in ONE transaction that holds
// the migration lock (sql::kMigrationLock): the keywarden tables and the
// append-only function are dropped (the audit tables refuse UPDATE, DELETE
// and TRUNCATE by trigger) and created again from kPostgresSchema, every
// row is copied (CopyAllRows), and the requests id identity continues above
// both the highest id loaded and the highest id the replaced contents ever
// handed out (ids are never reused: a client may still hold one). Anything
// failing rolls the whole of it back: the old contents stay. A database
// holding tables of something else is refused. The caller holds the
// exclusive daemon lock (LockPostgresDatabase) and has backed the old
// contents up. The backup's leases ("lease.*" settings) are not kept: they
// name replicas that are not running.
absl::StatusOr<PostgresReplaceReport> ReplacePostgresContents(const DatabaseOptions& options,
                                                              const std::string& sqlite_copy);

}  // namespace keywarden::service
