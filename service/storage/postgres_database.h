// sql::Database over PostgreSQL (libpq): a bounded connection pool,
// transactions at READ COMMITTED with bounded retries of serialization
// failures, deadlocks and connections lost before COMMIT, ?N placeholders
// rewritten to $N, and SQLSTATEs mapped to the error codes of sql.h.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/storage/db_lock.h"
#include "service/storage/sql.h"

namespace keywarden::service {

struct PostgresOptions {
  // libpq connection string: key=value pairs or a postgresql:// URI; its
  // sslmode, sslrootcert, host, dbname, user... apply. It must not hold a
  // password (that goes in `password`, read from file:/env:).
  std::string connection;
  // The password, already read from its source (ReadDatabasePassword in
  // service/config.h); may be empty (peer or certificate authentication, or
  // a passfile). Every PostgresOptions wipes it when destroyed; the database
  // keeps a copy in a wiped buffer for reconnecting.
  std::string password;
  int pool_size = 8;    // at most this many connections (1..256)
  int max_retries = 5;  // reruns of a transaction after a transient failure (0..100)
  std::chrono::milliseconds connect_timeout{5000};
  // How long a transaction waits for a free connection when all pool_size
  // are busy before it fails with UNAVAILABLE.
  std::chrono::milliseconds acquire_timeout{30000};

  ~PostgresOptions();
};

// Connects once (so a wrong host, password, database or TLS setting fails
// here, with libpq's reason) and returns the pool. The connection string is
// refused when it holds a password.
absl::StatusOr<std::unique_ptr<sql::Database>> OpenPostgresDatabase(const PostgresOptions& options);

// Who may use a PostgreSQL CA database (the counterpart of LockDatabase in
// db_lock.h): every keywardend holds the advisory lock sql::kDaemonLock
// shared, on a connection of its own, for its lifetime; `keywarden restore`
// holds it exclusively while it replaces the contents. The lock goes with
// the connection: released when the returned object is destroyed, the
// process ends or the server drops the connection.
enum class PostgresLockMode {
  kShared,     // keywardend: any number of replicas together, no restore
  kExclusive,  // keywarden restore: no keywardend
};
// Takes the lock without waiting. FAILED_PRECONDITION when the other mode
// holds it: "<holder>: keywardend is running (N sessions ...)" for an
// exclusive request, "<holder>: keywarden restore is replacing the
// database ..." for a shared one. A connection failure is UNAVAILABLE.
// path() of the lock describes it ("PostgreSQL advisory lock ... on
// host=... dbname=...").
absl::StatusOr<std::unique_ptr<DatabaseLock>> LockPostgresDatabase(const PostgresOptions& options,
                                                                   PostgresLockMode mode,
                                                                   const std::string& holder);

// OK when `connection` parses as a libpq connection string and holds no
// password; otherwise INVALID_ARGUMENT naming the problem (never echoing a
// value from the string).
absl::Status CheckPostgresConnectionString(std::string_view connection);

// SQL text with ?N placeholders as PostgreSQL's $N. ?N inside '...'
// literals, "..." identifiers, $tag$...$tag$ bodies and comments is left
// alone. `max_index` (when given) receives the highest N used.
std::string RewritePlaceholders(std::string_view sql, int* max_index = nullptr);

// The status for a PostgreSQL error: "<what>: <message> (SQLSTATE xxxxx)"
// with the code sql.h gives its class; the database's own failures are
// marked with MarkDatabaseFault.
absl::Status StatusForSqlstate(std::string_view what, std::string_view sqlstate,
                               std::string_view message);

}  // namespace keywarden::service
