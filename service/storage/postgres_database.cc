#include "service/storage/postgres_database.h"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "hsm/secret.h"
#include "hsm/strings.h"
#include "service/storage/store.h"

namespace keywarden::service {
namespace {

using keywarden::StrCat;

// Type OIDs (pg_type.dat): fixed since PostgreSQL 7.
constexpr Oid kBoolOid = 16;
constexpr Oid kByteaOid = 17;
constexpr Oid kInt8Oid = 20;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kTextOid = 25;

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// libpq's messages end in a newline and may span lines.
std::string Trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  std::string out(s);
  std::replace(out.begin(), out.end(), '\n', ' ');
  return out;
}

// Where a connection goes, without secrets: "host=/run/pg port=5432 dbname=ca user=kw".
std::string Describe(const PGconn* c) {
  std::string out;
  auto add = [&](const char* key, const char* value) {
    if (value == nullptr || *value == '\0') return;
    if (!out.empty()) out += ' ';
    out += StrCat(key, "=", value);
  };
  add("host", PQhost(c));
  add("port", PQport(c));
  add("dbname", PQdb(c));
  add("user", PQuser(c));
  return out;
}

// The value libpq settled on for `keyword` on a connection ("" if none).
std::string ConnOption(PGconn* c, std::string_view keyword) {
  std::string out;
  PQconninfoOption* opts = PQconninfo(c);
  if (opts == nullptr) return out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (keyword == o->keyword && o->val != nullptr) out = o->val;
  }
  PQconninfoFree(opts);
  return out;
}

bool SslModeNeedsTls(std::string_view mode) {
  return mode == "require" || mode == "verify-ca" || mode == "verify-full";
}

// A connection-level failure (no SQLSTATE from the server, or the
// connection gone): the database unreachable.
absl::Status ConnectionLost(std::string_view what, PGconn* c) {
  return MarkDatabaseFault(absl::UnavailableError(
      StrCat(what, ": connection to PostgreSQL lost (", Trim(PQerrorMessage(c)), ")")));
}

bool IsRetryableSqlstate(std::string_view state) {
  return state == "40001" || state == "40P01";
}

// Errors of the server shutting down or the connection failing: the
// transaction did not happen and may be rerun on another connection.
bool IsConnectionSqlstate(std::string_view state) {
  return state.starts_with("08") || state == "57P01" || state == "57P02" || state == "57P03";
}

absl::Status ResultError(std::string_view what, PGconn* c, const PGresult* r) {
  const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const char* primary = r != nullptr ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  if (state == nullptr || *state == '\0') {
    if (PQstatus(c) != CONNECTION_OK) return ConnectionLost(what, c);
    std::string message = r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(c);
    return absl::InternalError(StrCat(what, ": ", Trim(message)));
  }
  return StatusForSqlstate(what, state, primary != nullptr ? primary : Trim(PQerrorMessage(c)));
}

// RewritePlaceholders, also telling which ?N appear (used[N-1]).
std::string RewriteAndMark(std::string_view sql, int* max_index, std::vector<bool>* used);

class PgSession : public sql::Session {
 public:
  explicit PgSession(PGconn* c) : conn_(c) {}
  sql::Dialect dialect() const override { return sql::Dialect::kPostgresql; }

  absl::StatusOr<std::vector<sql::Row>> Query(std::string_view what, std::string_view sql,
                                              const std::vector<sql::Value>& params) override;
  absl::StatusOr<int64_t> Execute(std::string_view what, std::string_view sql,
                                  const std::vector<sql::Value>& params) override;
  absl::Status LockForTransaction(int64_t key) override;

  // A statement failed in a way that makes rerunning the transaction the
  // right answer (serialization failure, deadlock, connection lost).
  bool retryable() const { return retryable_; }
  // A statement failed: the server has aborted the transaction.
  const absl::Status& first_error() const { return first_error_; }

 private:
  absl::StatusOr<ResultPtr> Run(std::string_view what, std::string_view sql,
                                const std::vector<sql::Value>& params);
  absl::Status Fail(absl::Status st, bool retryable) {
    retryable_ = retryable_ || retryable;
    if (first_error_.ok()) first_error_ = st;
    return st;
  }

  PGconn* conn_;
  bool retryable_ = false;
  absl::Status first_error_;
};

absl::StatusOr<ResultPtr> PgSession::Run(std::string_view what, std::string_view sql,
                                         const std::vector<sql::Value>& params) {
  int max_index = 0;
  std::vector<bool> used;
  const std::string text = RewriteAndMark(sql, &max_index, &used);
  if (max_index > static_cast<int>(params.size())) {
    return absl::InvalidArgumentError(StrCat(what, ": the statement uses ?", max_index, " but ",
                                             params.size(), " parameters are given"));
  }
  const size_t n = params.size();
  std::vector<Oid> types(n, 0);
  std::vector<std::string> storage(n);
  std::vector<const char*> values(n, nullptr);
  std::vector<int> lengths(n, 0);
  std::vector<int> formats(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const sql::Value& v = params[i];
    if (const int64_t* x = std::get_if<int64_t>(&v)) {
      storage[i] = std::to_string(*x);
      values[i] = storage[i].c_str();
      types[i] = kInt8Oid;
    } else if (const std::string* s = std::get_if<std::string>(&v)) {
      // Text travels NUL-terminated in text format: a NUL inside cannot be
      // sent (PostgreSQL text cannot hold one either).
      if (s->find('\0') != std::string::npos) {
        return absl::InvalidArgumentError(
            StrCat(what, ": parameter ?", i + 1, " is text holding a NUL character"));
      }
      values[i] = s->c_str();
    } else if (const sql::Bytes* b = std::get_if<sql::Bytes>(&v)) {
      // Binary format: the bytes as they are, zeros included. A bytea
      // holds at most 1 GiB.
      if (b->data.size() > (size_t{1} << 30)) {
        return absl::InvalidArgumentError(
            StrCat(what, ": parameter ?", i + 1, " is larger than 1 GiB"));
      }
      static const char kEmpty = 0;
      values[i] = b->data.empty() ? &kEmpty : reinterpret_cast<const char*>(b->data.data());
      lengths[i] = static_cast<int>(b->data.size());
      formats[i] = 1;
      types[i] = kByteaOid;
    }
  }
  // A parameter the text never names has no type to infer: call it text.
  for (size_t i = 0; i < n; ++i) {
    if (types[i] == 0 && (i >= used.size() || !used[i])) types[i] = kTextOid;
  }
  ResultPtr r(PQexecParams(conn_, text.c_str(), static_cast<int>(n), types.data(), values.data(),
                           lengths.data(), formats.data(), /*resultFormat=*/0));
  const ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
  absl::Status err = ResultError(what, conn_, r.get());
  const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
  const std::string_view s = state != nullptr ? state : "";
  const bool lost = PQstatus(conn_) != CONNECTION_OK || IsConnectionSqlstate(s);
  return Fail(std::move(err), lost || IsRetryableSqlstate(s));
}

absl::StatusOr<sql::Value> ColumnValue(std::string_view what, const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return sql::Value{};
  const char* v = PQgetvalue(r, row, col);
  const int len = PQgetlength(r, row, col);
  switch (PQftype(r, col)) {
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid: {
      int64_t x = 0;
      const auto [end, ec] = std::from_chars(v, v + len, x);
      if (ec != std::errc() || end != v + len) {
        return absl::InternalError(
            StrCat(what, ": column ", PQfname(r, col), " is not an integer"));
      }
      return sql::Value{x};
    }
    case kBoolOid:
      return sql::Value{int64_t{len == 1 && v[0] == 't' ? 1 : 0}};
    case kByteaOid: {
      size_t out_len = 0;
      unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(v), &out_len);
      if (raw == nullptr) {
        return absl::ResourceExhaustedError(
            StrCat(what, ": out of memory decoding column ", PQfname(r, col)));
      }
      sql::Bytes b;
      b.data.assign(raw, raw + out_len);
      PQfreemem(raw);
      return sql::Value{std::move(b)};
    }
    default:  // text, varchar, and anything else as its text form
      return sql::Value{std::string(v, static_cast<size_t>(len))};
  }
}

absl::StatusOr<std::vector<sql::Row>> PgSession::Query(std::string_view what, std::string_view sql,
                                                       const std::vector<sql::Value>& params) {
  absl::StatusOr<ResultPtr> r = Run(what, sql, params);
  if (!r.ok()) return r.status();
  const PGresult* res = r->get();
  std::vector<sql::Row> rows;
  const int nrows = PQntuples(res);
  const int ncols = PQnfields(res);
  rows.reserve(static_cast<size_t>(nrows));
  for (int i = 0; i < nrows; ++i) {
    std::vector<sql::Value> values;
    values.reserve(static_cast<size_t>(ncols));
    for (int j = 0; j < ncols; ++j) {
      absl::StatusOr<sql::Value> v = ColumnValue(what, res, i, j);
      if (!v.ok()) return v.status();
      values.push_back(std::move(*v));
    }
    rows.emplace_back(std::move(values));
  }
  return rows;
}

absl::StatusOr<int64_t> PgSession::Execute(std::string_view what, std::string_view sql,
                                           const std::vector<sql::Value>& params) {
  if (params.empty()) {
    // No parameters: the simple protocol, which also runs a script of
    // several statements (the schema); the last one's count is returned.
    int max_index = 0;
    const std::string text = RewritePlaceholders(sql, &max_index);
    if (max_index > 0) {
      return absl::InvalidArgumentError(
          StrCat(what, ": the statement uses ?", max_index, " but no parameters are given"));
    }
    if (!PQsendQuery(conn_, text.c_str())) return Fail(ConnectionLost(what, conn_), true);
    int64_t count = 0;
    absl::Status err;
    bool retry = false;
    while (PGresult* raw = PQgetResult(conn_)) {
      ResultPtr r(raw);
      const ExecStatusType st = PQresultStatus(raw);
      if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        const char* tuples = PQcmdTuples(raw);
        count = 0;
        if (tuples != nullptr && *tuples != '\0') {
          std::from_chars(tuples, tuples + std::strlen(tuples), count);
        }
      } else if (err.ok()) {
        err = ResultError(what, conn_, raw);
        const char* state = PQresultErrorField(raw, PG_DIAG_SQLSTATE);
        const std::string_view s = state != nullptr ? state : "";
        retry = IsRetryableSqlstate(s) || IsConnectionSqlstate(s);
      }
    }
    if (PQstatus(conn_) != CONNECTION_OK) {
      return Fail(err.ok() ? ConnectionLost(what, conn_) : err, true);
    }
    if (!err.ok()) return Fail(std::move(err), retry);
    return count;
  }
  absl::StatusOr<ResultPtr> r = Run(what, sql, params);
  if (!r.ok()) return r.status();
  const char* tuples = PQcmdTuples(r->get());
  int64_t count = 0;
  if (tuples != nullptr && *tuples != '\0')
    std::from_chars(tuples, tuples + std::strlen(tuples), count);
  return count;
}

absl::Status PgSession::LockForTransaction(int64_t key) {
  return Query(StrCat("taking transaction lock ", key), "SELECT pg_advisory_xact_lock(?1)", {key})
      .status();
}

class PostgresDatabase : public sql::Database {
 public:
  PostgresDatabase(const PostgresOptions& options)
      : connection_(options.connection),
        password_(options.password),
        pool_size_(options.pool_size),
        max_retries_(options.max_retries),
        connect_timeout_(options.connect_timeout),
        acquire_timeout_(options.acquire_timeout) {}

  ~PostgresDatabase() override {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.clear();
  }

  sql::Dialect dialect() const override { return sql::Dialect::kPostgresql; }

  absl::Status Transact(std::string_view what, sql::Access access,
                        const std::function<absl::Status(sql::Session&)>& fn) override;

  // A new connection, checked: TLS when sslmode asks for it.
  absl::StatusOr<ConnPtr> Connect();
  // Puts a connection made by Connect (counted already) into the pool.
  void AddIdle(ConnPtr c) {
    std::lock_guard<std::mutex> lock(mu_);
    ++open_;
    idle_.push_back(std::move(c));
  }

 private:
  enum class Outcome { kDone, kRetry };

  // A free connection, or a new one. `busy` tells a timeout waiting for a
  // free one (not retried) from a failure to connect.
  absl::StatusOr<ConnPtr> Acquire(std::string_view what, bool& busy);
  void Release(ConnPtr c);
  // One attempt: BEGIN, fn, COMMIT. kRetry with the error that caused it.
  Outcome RunOnce(PGconn* c, std::string_view what, sql::Access access,
                  const std::function<absl::Status(sql::Session&)>& fn, absl::Status& result);
  void Backoff(int attempt);

  const std::string connection_;
  const hsm::SecretString password_;
  const int pool_size_;
  const int max_retries_;
  const std::chrono::milliseconds connect_timeout_;
  const std::chrono::milliseconds acquire_timeout_;

  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<ConnPtr> idle_;  // guarded by mu_
  int open_ = 0;               // connections idle or in use; guarded by mu_
};

absl::StatusOr<ConnPtr> PostgresDatabase::Connect() {
  // Defaults before dbname, so the connection string can set its own:
  // connect_timeout, and TCP keepalives that notice a vanished server (or a
  // failover) within about a minute rather than the kernel's two hours.
  // application_name after it, so the server always sees keywardend.
  const std::string timeout =
      std::to_string(std::max<int64_t>(2, (connect_timeout_.count() + 999) / 1000));
  std::vector<const char*> keys = {"connect_timeout",     "keepalives",       "keepalives_idle",
                                   "keepalives_interval", "keepalives_count", "dbname",
                                   "application_name"};
  std::vector<const char*> values = {timeout.c_str(),     "1",         "30", "10", "3",
                                     connection_.c_str(), "keywardend"};
  // libpq copies the password into the connection (and wipes it when the
  // connection is freed); this copy is wiped right after.
  hsm::SecretString password = password_;
  std::string pw(password.view());
  if (!pw.empty()) {
    keys.push_back("password");
    values.push_back(pw.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  ConnPtr c(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1));
  OPENSSL_cleanse(pw.data(), pw.size());
  if (c == nullptr) return absl::ResourceExhaustedError("connecting to PostgreSQL: out of memory");
  // Notices and warnings are not errors, and libpq would print them on
  // stderr; errors reach the caller through the statement's result.
  PQsetNoticeProcessor(
      c.get(), [](void*, const char*) {}, nullptr);
  const std::string sslmode = ConnOption(c.get(), "sslmode");
  if (PQstatus(c.get()) != CONNECTION_OK) {
    std::string why = Trim(PQerrorMessage(c.get()));
    if (SslModeNeedsTls(sslmode) && why.find("SSL") != std::string::npos) {
      why = StrCat("TLS to the database failed (sslmode=", sslmode, "): ", why);
    }
    return MarkDatabaseFault(absl::UnavailableError(
        StrCat("connecting to PostgreSQL (", Describe(c.get()), "): ", why)));
  }
  if (SslModeNeedsTls(sslmode) && PQsslInUse(c.get()) == 0) {
    // libpq never uses TLS over a Unix socket, whatever sslmode says.
    return MarkDatabaseFault(absl::FailedPreconditionError(
        StrCat("connecting to PostgreSQL (", Describe(c.get()), "): sslmode=", sslmode,
               " but the connection does not use TLS (libpq uses no TLS over a Unix socket; "
               "give a host name or address to connect over TCP with TLS)")));
  }
  return c;
}

// An idle connection the server has closed meanwhile (terminated,
// restarted) has a readable socket: the server's last words (FATAL 57P01)
// and the end of the stream. An idle connection has nothing to hear
// otherwise (keywarden never LISTENs), so a readable one is not reused.
bool StillUsable(PGconn* c) {
  if (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE) return false;
  pollfd p{PQsocket(c), POLLIN, 0};
  if (p.fd < 0) return false;
  const int ready = poll(&p, 1, 0);
  return ready == 0;
}

absl::StatusOr<ConnPtr> PostgresDatabase::Acquire(std::string_view what, bool& busy) {
  busy = false;
  const auto deadline = std::chrono::steady_clock::now() + acquire_timeout_;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    while (!idle_.empty()) {
      ConnPtr c = std::move(idle_.back());
      idle_.pop_back();
      if (StillUsable(c.get())) return c;
      --open_;  // dropped; its slot may be refilled below
    }
    if (open_ < pool_size_) {
      ++open_;
      lock.unlock();
      absl::StatusOr<ConnPtr> c = Connect();
      if (!c.ok()) {
        lock.lock();
        --open_;
        freed_.notify_one();
        return c.status();
      }
      return c;
    }
    if (freed_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= pool_size_) {
      busy = true;
      return MarkDatabaseFault(absl::UnavailableError(
          StrCat(what, ": all ", pool_size_, " PostgreSQL connections stayed busy for ",
                 acquire_timeout_.count(), " ms (database.pool_size)")));
    }
  }
}

void PostgresDatabase::Release(ConnPtr c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (c != nullptr && PQstatus(c.get()) == CONNECTION_OK &&
      PQtransactionStatus(c.get()) == PQTRANS_IDLE) {
    idle_.push_back(std::move(c));
  } else {
    c.reset();  // broken, or left inside a transaction: closed, replaced on demand
    --open_;
  }
  freed_.notify_one();
}

void PostgresDatabase::Backoff(int attempt) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const int64_t base_ms = std::min<int64_t>(1000, int64_t{10} << std::min(attempt, 10));
  std::uniform_int_distribution<int64_t> jitter(base_ms / 2, base_ms + base_ms / 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(jitter(rng)));
}

PostgresDatabase::Outcome PostgresDatabase::RunOnce(
    PGconn* c, std::string_view what, sql::Access access,
    const std::function<absl::Status(sql::Session&)>& fn, absl::Status& result) {
  const char* begin = access == sql::Access::kRead
                          // One snapshot for the whole read (a backup is
                          // consistent); read-only REPEATABLE READ never
                          // fails to serialize.
                          ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                          : "BEGIN ISOLATION LEVEL READ COMMITTED";
  {
    ResultPtr r(PQexec(c, begin));
    if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
      result = ResultError(StrCat(what, ": BEGIN"), c, r.get());
      // Nothing has run: a lost connection is simply replaced.
      const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
      const bool lost =
          PQstatus(c) != CONNECTION_OK || (state != nullptr && IsConnectionSqlstate(state));
      return lost ? Outcome::kRetry : Outcome::kDone;
    }
  }
  PgSession session(c);
  absl::Status st = fn(session);
  if (st.ok() && !session.first_error().ok()) {
    // fn went on after a failed statement; PostgreSQL has aborted the
    // transaction, and COMMIT would only roll it back.
    st = session.first_error();
  }
  if (!st.ok()) {
    if (PQstatus(c) == CONNECTION_OK) ResultPtr(PQexec(c, "ROLLBACK"));
    result = st;
    return session.retryable() ? Outcome::kRetry : Outcome::kDone;
  }
  if (PQstatus(c) != CONNECTION_OK) {
    // Lost before COMMIT was sent: nothing was committed.
    result = ConnectionLost(what, c);
    return Outcome::kRetry;
  }
  ResultPtr r(PQexec(c, "COMMIT"));
  if (r && PQresultStatus(r.get()) == PGRES_COMMAND_OK) {
    if (std::strcmp(PQcmdStatus(r.get()), "COMMIT") == 0) {
      result = absl::OkStatus();
      return Outcome::kDone;
    }
    result = absl::InternalError(StrCat(what, ": COMMIT rolled back (", PQcmdStatus(r.get()), ")"));
    return Outcome::kDone;
  }
  const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
  if (PQstatus(c) != CONNECTION_OK || state == nullptr) {
    result = MarkDatabaseFault(absl::UnavailableError(
        StrCat(what,
               ": commit outcome unknown: the connection to PostgreSQL was lost while "
               "committing (",
               Trim(PQerrorMessage(c)), ")")));
    return Outcome::kDone;
  }
  // The server answered: the transaction did not commit (a serialization
  // failure found at commit, a deferred constraint).
  result = ResultError(StrCat(what, ": COMMIT"), c, r.get());
  if (PQtransactionStatus(c) != PQTRANS_IDLE) ResultPtr(PQexec(c, "ROLLBACK"));
  return IsRetryableSqlstate(state) ? Outcome::kRetry : Outcome::kDone;
}

absl::Status PostgresDatabase::Transact(std::string_view what, sql::Access access,
                                        const std::function<absl::Status(sql::Session&)>& fn) {
  absl::Status last;
  for (int attempt = 0;; ++attempt) {
    bool busy = false;
    absl::StatusOr<ConnPtr> c = Acquire(what, busy);
    Outcome outcome;
    if (!c.ok()) {
      // Cannot reach the server: like a connection lost before COMMIT.
      // Waiting longer for a busy pool, or a TLS setting, does not help.
      last = c.status();
      if (busy || absl::IsFailedPrecondition(last)) return last;
      outcome = Outcome::kRetry;
    } else {
      outcome = RunOnce(c->get(), what, access, fn, last);
      Release(std::move(*c));
    }
    if (outcome == Outcome::kDone) return last;
    if (attempt >= max_retries_) {
      absl::Status out(
          last.code() == absl::StatusCode::kOk ? absl::StatusCode::kUnavailable : last.code(),
          StrCat(what, ": gave up after ", attempt + 1, " attempts (database max_retries = ",
                 max_retries_, "); last error: ", last.message()));
      return MarkDatabaseFault(std::move(out));
    }
    Backoff(attempt);
  }
}

// A libpq parse error echoes pieces of the string; a piece may be a
// password. Drop whatever it quotes.
std::string RedactQuoted(std::string_view message) {
  std::string out;
  bool inside = false;
  for (char ch : message) {
    if (ch == '"') {
      out += inside ? "\"" : "\"...";
      inside = !inside;
    } else if (!inside) {
      out += ch;
    }
  }
  return Trim(out);
}

}  // namespace

PostgresOptions::~PostgresOptions() {
  OPENSSL_cleanse(password.data(), password.size());
}

absl::Status CheckPostgresConnectionString(std::string_view connection) {
  const std::string text(connection);
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(text.c_str(), &err);
  if (opts == nullptr) {
    std::string why = err != nullptr ? RedactQuoted(err) : "out of memory";
    if (err != nullptr) PQfreemem(err);
    return absl::InvalidArgumentError(
        StrCat("database.connection is not a libpq connection string (key=value pairs or a "
               "postgresql:// URI): ",
               why));
  }
  bool has_password = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (std::strcmp(o->keyword, "password") == 0 && o->val != nullptr && *o->val != '\0') {
      has_password = true;
      OPENSSL_cleanse(o->val, std::strlen(o->val));
    }
  }
  PQconninfoFree(opts);
  if (has_password) {
    return absl::InvalidArgumentError(
        "database.connection holds a password (password=... or user:password@ in the URI); "
        "remove it and set database.password = \"file:/path\" or \"env:NAME\" instead");
  }
  return absl::OkStatus();
}

std::string RewritePlaceholders(std::string_view sql, int* max_index) {
  return RewriteAndMark(sql, max_index, nullptr);
}

namespace {

std::string RewriteAndMark(std::string_view sql, int* max_index, std::vector<bool>* used) {
  std::string out;
  out.reserve(sql.size() + 8);
  int highest = 0;
  size_t i = 0;
  const size_t n = sql.size();
  auto copy_until = [&](size_t end) {
    out.append(sql.substr(i, end - i));
    i = end;
  };
  while (i < n) {
    const char ch = sql[i];
    if (ch == '\'' || ch == '"') {
      // '...' or "...": a doubled quote stays inside.
      size_t j = i + 1;
      while (j < n) {
        if (sql[j] == ch) {
          if (j + 1 < n && sql[j + 1] == ch) {
            j += 2;
            continue;
          }
          break;
        }
        ++j;
      }
      copy_until(std::min(n, j + 1));
    } else if (ch == '-' && i + 1 < n && sql[i + 1] == '-') {
      const size_t end = sql.find('\n', i);
      copy_until(end == std::string_view::npos ? n : end);
    } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
      const size_t end = sql.find("*/", i + 2);
      copy_until(end == std::string_view::npos ? n : end + 2);
    } else if (ch == '$' && i + 1 < n && !(sql[i + 1] >= '0' && sql[i + 1] <= '9')) {
      // $tag$ ... $tag$ (a function body); a bare $ otherwise.
      size_t j = i + 1;
      while (j < n && (std::isalnum(static_cast<unsigned char>(sql[j])) || sql[j] == '_')) ++j;
      if (j < n && sql[j] == '$') {
        const std::string_view tag = sql.substr(i, j - i + 1);
        const size_t end = sql.find(tag, j + 1);
        copy_until(end == std::string_view::npos ? n : end + tag.size());
      } else {
        copy_until(i + 1);
      }
    } else if (ch == '?' && i + 1 < n && sql[i + 1] >= '1' && sql[i + 1] <= '9') {
      size_t j = i + 1;
      int index = 0;
      while (j < n && sql[j] >= '0' && sql[j] <= '9' && index < 100000) {
        index = index * 10 + (sql[j] - '0');
        ++j;
      }
      highest = std::max(highest, index);
      if (used != nullptr) {
        if (used->size() < static_cast<size_t>(index)) used->resize(static_cast<size_t>(index));
        (*used)[static_cast<size_t>(index) - 1] = true;
      }
      out += '$';
      out.append(sql.substr(i + 1, j - i - 1));
      i = j;
    } else {
      out += ch;
      ++i;
    }
  }
  if (max_index != nullptr) *max_index = highest;
  return out;
}

}  // namespace

absl::Status StatusForSqlstate(std::string_view what, std::string_view sqlstate,
                               std::string_view message) {
  const std::string text = StrCat(what, ": ", message, " (SQLSTATE ", sqlstate, ")");
  auto fault = [&](absl::StatusCode code) { return MarkDatabaseFault(absl::Status(code, text)); };
  const std::string_view cls = sqlstate.substr(0, 2);
  if (sqlstate == "23505") return absl::AlreadyExistsError(text);
  if (sqlstate == "23503" || sqlstate == "P0001") return absl::FailedPreconditionError(text);
  if (cls == "23" || cls == "22") return absl::InvalidArgumentError(text);
  if (sqlstate == "40001" || sqlstate == "40P01") return fault(absl::StatusCode::kAborted);
  if (cls == "08") return fault(absl::StatusCode::kUnavailable);
  if (cls == "53") return fault(absl::StatusCode::kResourceExhausted);
  if (sqlstate == "57014") return fault(absl::StatusCode::kDeadlineExceeded);
  if (cls == "57" || cls == "58") return fault(absl::StatusCode::kUnavailable);
  if (sqlstate == "XX001" || sqlstate == "XX002") return fault(absl::StatusCode::kDataLoss);
  if (cls == "XX") return fault(absl::StatusCode::kInternal);
  if (sqlstate == "25006" || cls == "28" || sqlstate == "42501") {
    return fault(absl::StatusCode::kPermissionDenied);
  }
  if (sqlstate == "55P03") return fault(absl::StatusCode::kUnavailable);
  return absl::InternalError(text);
}

namespace {

// One row, one column of a parameterless statement ("" on NULL).
absl::StatusOr<std::string> QueryOne(PGconn* c, std::string_view what, const std::string& sql) {
  ResultPtr r(PQexec(c, sql.c_str()));
  if (r == nullptr || PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
    return ResultError(what, c, r.get());
  }
  if (PQntuples(r.get()) != 1 || PQnfields(r.get()) != 1) {
    return absl::InternalError(StrCat(what, ": expected one value"));
  }
  return std::string(PQgetisnull(r.get(), 0, 0) ? "" : PQgetvalue(r.get(), 0, 0));
}

// Connects and takes the daemon lock in `mode` without waiting; sets
// `description` (PostgresLockMode in postgres_database.h).
absl::StatusOr<ConnPtr> TakeDaemonLock(PostgresDatabase& db, PostgresLockMode mode,
                                       const std::string& holder, std::string& description) {
  absl::StatusOr<ConnPtr> conn = db.Connect();
  if (!conn.ok()) {
    return absl::Status(conn.status().code(), StrCat(holder, ": ", conn.status().message()));
  }
  PGconn* c = conn->get();
  const bool exclusive = mode == PostgresLockMode::kExclusive;
  const std::string key = std::to_string(sql::kDaemonLock);
  const std::string what = StrCat(holder, ": taking the ", exclusive ? "exclusive" : "shared",
                                  " database lock (advisory lock ", key, ")");
  absl::StatusOr<std::string> got = QueryOne(
      c, what,
      StrCat("SELECT ", exclusive ? "pg_try_advisory_lock(" : "pg_try_advisory_lock_shared(", key,
             ")"));
  if (!got.ok()) return got.status();
  description = StrCat("PostgreSQL advisory lock ", key, " (", exclusive ? "exclusive" : "shared",
                       ") on ", Describe(c));
  if (*got == "t") {
    // The lock's connection says who holds it (pg_stat_activity), so the
    // refusal the other side gets names "keywarden restore" or "keywardend".
    const char* values[] = {holder.c_str()};
    ResultPtr named(PQexecParams(c, "SELECT set_config('application_name', $1, false)", 1, nullptr,
                                 values, nullptr, nullptr, 0));
    if (named == nullptr || PQresultStatus(named.get()) != PGRES_TUPLES_OK) {
      return ResultError(what, c, named.get());
    }
    return *std::move(conn);
  }
  // Who holds it: the sessions holding the key in this database (a bigint
  // key is classid = high 32 bits, objid = low 32 bits, objsubid = 1).
  const std::string holders_sql = StrCat(
      "SELECT count(DISTINCT l.pid) || ' session' || CASE WHEN count(DISTINCT l.pid) = 1 THEN '' "
      "ELSE 's' END || coalesce(': ' || string_agg(DISTINCT 'pid ' || l.pid || "
      "coalesce(' ' || a.application_name || '@' || coalesce(host(a.client_addr), 'local'), ''), "
      "', '), '') FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
      "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
      "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
      "AND l.classid = ",
      (static_cast<uint64_t>(sql::kDaemonLock) >> 32) & 0xffffffffu,
      " AND l.objid = ", static_cast<uint64_t>(sql::kDaemonLock) & 0xffffffffu,
      " AND l.pid <> pg_backend_pid()");
  absl::StatusOr<std::string> who = QueryOne(c, what, holders_sql);
  const std::string sessions = who.ok() ? *who : "sessions unknown";
  if (exclusive) {
    return absl::FailedPreconditionError(
        StrCat(holder, ": keywardend is running (", sessions, ") on the database ", Describe(c),
               " (it holds advisory lock ", key, "); stop every keywardend replica first"));
  }
  return absl::FailedPreconditionError(
      StrCat(holder, ": keywarden restore is replacing the database ", Describe(c), " (", sessions,
             " hold advisory lock ", key, " exclusively); start after it finishes"));
}

class PostgresDatabaseLock final : public DatabaseLock {
 public:
  PostgresDatabaseLock(const PostgresOptions& options, PostgresLockMode mode, std::string holder)
      : db_(options), mode_(mode), holder_(std::move(holder)) {}
  absl::Status Take() {
    absl::StatusOr<ConnPtr> conn = TakeDaemonLock(db_, mode_, holder_, description_);
    if (!conn.ok()) return conn.status();
    conn_ = *std::move(conn);
    return absl::OkStatus();
  }
  // Closing a connection releases its session-level locks, but only once
  // the server has noticed: PQfinish does not wait for that, so a
  // "keywarden restore" run the moment the last keywardend exits could
  // still find the shared lock held. The lock is given back first, waiting
  // at most kReleaseWait for the server's answer (a vanished server gets
  // the connection closed, and releases the lock when it notices).
  ~PostgresDatabaseLock() override {
    if (conn_ != nullptr && StillUsable(conn_.get())) Release(conn_.get());
  }
  const std::string& path() const override { return description_; }
  absl::Status Refresh() override {
    if (conn_ != nullptr && StillUsable(conn_.get())) return absl::OkStatus();
    conn_.reset();  // the server closed it (restart, terminated): the lock is gone
    return Take();
  }

 private:
  static constexpr std::chrono::milliseconds kReleaseWait{2000};

  static void Release(PGconn* c) {
    if (PQsendQuery(c, "SELECT pg_advisory_unlock_all()") == 0) return;
    const auto deadline = std::chrono::steady_clock::now() + kReleaseWait;
    while (PQisBusy(c) != 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return;
      pollfd p{PQsocket(c), POLLIN, 0};
      if (p.fd < 0) return;
      const int ready = poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;  // a signal: the deadline still holds
      if (ready < 0 || PQconsumeInput(c) == 0) return;
    }
    while (PGresult* r = PQgetResult(c)) PQclear(r);
  }

  PostgresDatabase db_;  // keeps the connection string and password for Refresh
  const PostgresLockMode mode_;
  const std::string holder_;
  ConnPtr conn_;
  std::string description_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatabaseLock>> LockPostgresDatabase(const PostgresOptions& options,
                                                                   PostgresLockMode mode,
                                                                   const std::string& holder) {
  if (absl::Status st = CheckPostgresConnectionString(options.connection); !st.ok()) return st;
  auto lock = std::make_unique<PostgresDatabaseLock>(options, mode, holder);
  if (absl::Status st = lock->Take(); !st.ok()) return st;
  return std::unique_ptr<DatabaseLock>(std::move(lock));
}

absl::StatusOr<std::unique_ptr<sql::Database>> OpenPostgresDatabase(
    const PostgresOptions& options) {
  if (absl::Status st = CheckPostgresConnectionString(options.connection); !st.ok()) return st;
  if (options.pool_size < 1 || options.pool_size > 256) {
    return absl::InvalidArgumentError(
        StrCat("database.pool_size ", options.pool_size, " is not in 1..256"));
  }
  if (options.max_retries < 0 || options.max_retries > 100) {
    return absl::InvalidArgumentError(
        StrCat("PostgreSQL max_retries ", options.max_retries, " is not in 0..100"));
  }
  auto db = std::make_unique<PostgresDatabase>(options);
  absl::StatusOr<ConnPtr> first = db->Connect();
  if (!first.ok()) return first.status();
  db->AddIdle(std::move(*first));
  return std::unique_ptr<sql::Database>(std::move(db));
}

}  // namespace keywarden::service
