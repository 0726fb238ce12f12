// The PostgreSQL backend of sql::Database against a real server (the
// cluster of deploy/pg-cluster.sh; each test has its own database). What the
// backend wrote is checked through a separate libpq connection
// (PgAdminQuery) and, for bytes, with OpenSSL's SHA-256 against the
// server's sha256().
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <latch>
#include <limits>
#include <random>
#include <thread>

#include "hsm/strings.h"
#include "service/storage/postgres_database.h"
#include "service/storage/postgres_schema.h"
#include "service/storage/postgres_store.h"
#include "service/storage/store.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace keywarden::service {
namespace {

using ::keywarden::testing::Contains;
using ::keywarden::testing::PgDatabaseTest;
using ::keywarden::testing::RunCommand;

std::string Sha256Hex(const std::vector<uint8_t>& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return HexString(std::span<const uint8_t>(md, len));
}

// -- without a server

TEST(PostgresPlaceholdersTest, RewritesQuestionNumbersToDollarNumbers) {
  int max = 0;
  EXPECT_EQ(RewritePlaceholders("SELECT ?2, ?1, ?2 FROM t WHERE a = ?10", &max),
            "SELECT $2, $1, $2 FROM t WHERE a = $10");
  EXPECT_EQ(max, 10);
}

TEST(PostgresPlaceholdersTest, LeavesLiteralsIdentifiersCommentsAndBodiesAlone) {
  int max = 0;
  const std::string sql =
      "SELECT 'it''s ?1', \"col ?2\", ?3 -- ?4\n/* ?5 */ $$ ?6 $$, $f$ ?7 $f$, ?8, ? , ?x";
  EXPECT_EQ(RewritePlaceholders(sql, &max),
            "SELECT 'it''s ?1', \"col ?2\", $3 -- ?4\n/* ?5 */ $$ ?6 $$, $f$ ?7 $f$, $8, ? , ?x");
  EXPECT_EQ(max, 8);
}

TEST(PostgresErrorsTest, SqlstatesMapToTheCodesOfSqlH) {
  struct Case {
    const char* state;
    absl::StatusCode code;
    bool fault;
  };
  const Case cases[] = {
      {"23505", absl::StatusCode::kAlreadyExists, false},
      {"23503", absl::StatusCode::kFailedPrecondition, false},
      {"P0001", absl::StatusCode::kFailedPrecondition, false},
      {"23502", absl::StatusCode::kInvalidArgument, false},
      {"23514", absl::StatusCode::kInvalidArgument, false},
      {"22P02", absl::StatusCode::kInvalidArgument, false},
      {"42601", absl::StatusCode::kInternal, false},
      {"40001", absl::StatusCode::kAborted, true},
      {"40P01", absl::StatusCode::kAborted, true},
      {"08006", absl::StatusCode::kUnavailable, true},
      {"53100", absl::StatusCode::kResourceExhausted, true},
      {"53300", absl::StatusCode::kResourceExhausted, true},
      {"57P01", absl::StatusCode::kUnavailable, true},
      {"58030", absl::StatusCode::kUnavailable, true},
      {"XX001", absl::StatusCode::kDataLoss, true},
      {"XX002", absl::StatusCode::kDataLoss, true},
      {"25006", absl::StatusCode::kPermissionDenied, true},
  };
  for (const Case& c : cases) {
    const absl::Status st = StatusForSqlstate("saving x", c.state, "it failed");
    EXPECT_EQ(st.code(), c.code) << c.state;
    EXPECT_EQ(IsDatabaseFault(st), c.fault) << c.state;
    EXPECT_EQ(st.message(), StrCat("saving x: it failed (SQLSTATE ", c.state, ")"));
  }
}

TEST(PostgresConnectionStringTest, PasswordInTheStringIsRefused) {
  for (const char* conn : {"host=db user=kw password=hunter2 dbname=ca",
                           "postgresql://kw:hunter2@db.example.com/ca?sslmode=verify-full"}) {
    const absl::Status st = CheckPostgresConnectionString(conn);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << conn;
    EXPECT_TRUE(Contains(std::string(st.message()), "database.password")) << st;
    EXPECT_TRUE(Contains(std::string(st.message()), "file:")) << st;
    EXPECT_FALSE(Contains(std::string(st.message()), "hunter2")) << st;
    // And OpenPostgresDatabase refuses it before connecting anywhere.
    PostgresOptions options;
    options.connection = conn;
    EXPECT_EQ(OpenPostgresDatabase(options).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(CheckPostgresConnectionString("host=db user=kw dbname=ca sslmode=verify-full").ok());
  EXPECT_TRUE(CheckPostgresConnectionString("postgresql://kw@db.example.com/ca").ok());
}

TEST(PostgresConnectionStringTest, MalformedStringIsRefusedWithoutEchoingIt) {
  const absl::Status st = CheckPostgresConnectionString("host=db hunter2secret");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(st.message()), "not a libpq connection string")) << st;
  EXPECT_FALSE(Contains(std::string(st.message()), "hunter2secret")) << st;
}

// A TCP peer that answers libpq's SSLRequest with 'N' (no TLS), as a
// PostgreSQL server without ssl = on does.
TEST(PostgresConnectTest, SslmodeRequireAgainstAServerWithoutTlsNamesTls) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::vector<uint8_t> request;
  std::thread server([&] {
    const int c = accept(fd, nullptr, nullptr);
    if (c < 0) return;
    uint8_t buf[8];
    size_t got = 0;
    while (got < sizeof buf) {
      const ssize_t n = read(c, buf + got, sizeof buf - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    request.assign(buf, buf + got);
    (void)!write(c, "N", 1);
    close(c);
  });
  PostgresOptions options;
  options.connection =
      StrCat("host=127.0.0.1 port=", ntohs(addr.sin_port), " user=kw dbname=ca sslmode=require");
  const absl::StatusOr<std::unique_ptr<sql::Database>> db = OpenPostgresDatabase(options);
  server.join();
  close(fd);
  // The SSLRequest packet: length 8, code 80877103 (PostgreSQL protocol docs).
  EXPECT_EQ(request, (std::vector<uint8_t>{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}));
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(IsDatabaseFault(db.status()));
  EXPECT_TRUE(Contains(std::string(db.status().message()), "TLS")) << db.status();
  EXPECT_TRUE(Contains(std::string(db.status().message()), "sslmode=require")) << db.status();
}

// -- against the test cluster

class PostgresDatabaseTest : public PgDatabaseTest {
 protected:
  std::unique_ptr<sql::Database> Open(int pool_size = 4, int max_retries = 5) {
    PostgresOptions options;
    options.connection = db().conninfo();
    options.pool_size = pool_size;
    options.max_retries = max_retries;
    options.acquire_timeout = std::chrono::milliseconds(5000);
    absl::StatusOr<std::unique_ptr<sql::Database>> d = OpenPostgresDatabase(options);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(*d) : nullptr;
  }
  std::string Scalar(const std::string& sql) {
    auto r = db().Query(sql);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->empty() || r->front().empty()) return "<none>";
    return r->front().front();
  }
  void Admin(const std::string& sql) {
    auto r = db().Query(sql);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  absl::Status Exec(sql::Database& d, const std::string& sql,
                    const std::vector<sql::Value>& params = {}) {
    return d.Transact("test", sql::Access::kWrite,
                      [&](sql::Session& s) { return s.Execute("test", sql, params).status(); });
  }
};

TEST_F(PostgresDatabaseTest, ValuesRoundTrip) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  Admin("CREATE TABLE v (k INT PRIMARY KEY, i BIGINT, s TEXT, b BYTEA)");
  std::mt19937 rng(7);
  std::vector<uint8_t> mb(1 << 20);
  for (uint8_t& x : mb) x = static_cast<uint8_t>(rng() % 4 == 0 ? 0 : rng());
  const std::string utf8 =
      "Gr\xc3\xbc\xc3\x9f"
      "e \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x94\x91";
  const std::vector<uint8_t> zeros = {0, 1, 0, 0xff, 0};
  ASSERT_TRUE(
      d->Transact("insert", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
         const char* ins = "INSERT INTO v (k, i, s, b) VALUES (?1, ?2, ?3, ?4)";
         for (auto params : std::vector<std::vector<sql::Value>>{
                  {int64_t{1}, {}, {}, {}},
                  {int64_t{2}, std::numeric_limits<int64_t>::min(), utf8, sql::Bytes{zeros}},
                  {int64_t{3}, std::numeric_limits<int64_t>::max(), "", sql::Bytes{}},
                  {int64_t{4}, int64_t{-1}, "x", sql::Bytes{mb}}}) {
           absl::StatusOr<int64_t> n = s.Execute("insert", ins, params);
           if (!n.ok()) return n.status();
           if (*n != 1) return absl::InternalError("insert count");
         }
         return absl::OkStatus();
       }).ok());
  // What the server holds, read without the code under test.
  auto rows = db().Query(
      "SELECT k, i IS NULL, i::text, s IS NULL, s = E'Gr\\u00fc\\u00dfe \\u4e16\\u754c "
      "\\U0001F511', octet_length(s), b IS NULL, octet_length(b), encode(sha256(b), 'hex') "
      "FROM v ORDER BY k");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 4u);
  EXPECT_EQ((*rows)[0], (std::vector<std::string>{"1", "t", "<null>", "t", "<null>", "<null>", "t",
                                                  "<null>", "<null>"}));
  EXPECT_EQ((*rows)[1][2], "-9223372036854775808");
  EXPECT_EQ((*rows)[1][4], "t");
  EXPECT_EQ((*rows)[1][5], "19");  // 1+1+2+2+1+1+3+3+1+4 bytes
  EXPECT_EQ((*rows)[1][7], "5");
  EXPECT_EQ((*rows)[1][8], Sha256Hex(zeros));
  EXPECT_EQ((*rows)[2][2], "9223372036854775807");
  EXPECT_EQ((*rows)[2][6], "f");  // an empty blob is not NULL
  EXPECT_EQ((*rows)[2][7], "0");
  EXPECT_EQ((*rows)[3][7], "1048576");
  EXPECT_EQ((*rows)[3][8], Sha256Hex(mb));

  // And back through the backend.
  std::vector<sql::Row> got;
  absl::Status read_status =
      d->Transact("read", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
        auto r = s.Query("read", "SELECT i, s, b, k::int2, k::int4, k > 2 FROM v ORDER BY v.k");
        if (!r.ok()) return r.status();
        got = std::move(*r);
        return absl::OkStatus();
      });
  ASSERT_TRUE(read_status.ok()) << read_status;
  ASSERT_EQ(got.size(), 4u);
  EXPECT_TRUE(got[0].IsNull(0));
  EXPECT_TRUE(got[0].IsNull(1));
  EXPECT_TRUE(got[0].IsNull(2));
  EXPECT_EQ(got[1].Int(0), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(got[1].Text(1), utf8);
  EXPECT_EQ(got[1].Blob(2), zeros);
  EXPECT_EQ(got[2].Int(0), std::numeric_limits<int64_t>::max());
  EXPECT_FALSE(got[2].IsNull(1));
  EXPECT_FALSE(got[2].IsNull(2));
  EXPECT_TRUE(got[2].Blob(2).empty());
  EXPECT_EQ(got[3].Int(0), -1);
  EXPECT_EQ(got[3].Blob(2), mb);
  // int2/int4 are integers, bool is 0/1 (as an integer, so its text is "1").
  EXPECT_EQ(got[3].Int(3), 4);
  EXPECT_EQ(got[3].Int(4), 4);
  EXPECT_EQ(got[3].Text(5), "1");
  EXPECT_EQ(got[0].Text(5), "0");
}

TEST_F(PostgresDatabaseTest, PlaceholdersReusedOutOfOrderAndInsideLiterals) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  std::vector<sql::Row> rows;
  ASSERT_TRUE(d->Transact("q", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
                 auto r = s.Query("q",
                                  "SELECT ?2::text || '-' || ?1::text || '-' || ?2::text, "
                                  "'?1 and ?2', ?3 + ?3, 'it''s ?1' AS \"?2\"",
                                  {std::string("a"), std::string("b"), int64_t{21}});
                 if (!r.ok()) return r.status();
                 rows = std::move(*r);
                 return absl::OkStatus();
               }).ok());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].Text(0), "b-a-b");
  EXPECT_EQ(rows[0].Text(1), "?1 and ?2");
  EXPECT_EQ(rows[0].Int(2), 42);
  EXPECT_EQ(rows[0].Text(3), "it's ?1");

  // A parameter the text does not use, and NULL typed by its context.
  const absl::Status unused =
      d->Transact("q", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
        auto r = s.Query("q", "SELECT ?1 + 1, coalesce(?3, 'none')",
                         {int64_t{41}, std::string("ignored"), sql::Value{}});
        if (!r.ok()) return r.status();
        if ((*r)[0].Int(0) != 42 || (*r)[0].Text(1) != "none") return absl::InternalError("values");
        return absl::OkStatus();
      });
  EXPECT_TRUE(unused.ok()) << unused;

  // Too few parameters for the text: refused before it is sent.
  const absl::Status st = d->Transact("q", sql::Access::kRead, [&](sql::Session& s) {
    return s.Query("counting", "SELECT ?1, ?2", {int64_t{1}}).status();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(st.message()), "?2")) << st;
}

TEST_F(PostgresDatabaseTest, ExecuteCountsTheRowsItChanged) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  std::vector<int64_t> counts;
  const absl::Status st =
      d->Transact("count", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
        for (auto [sql, params] : std::vector<std::pair<const char*, std::vector<sql::Value>>>{
                 {"CREATE TABLE t (x BIGINT); INSERT INTO t VALUES (1), (2), (3), (4)", {}},
                 {"UPDATE t SET x = x + 10 WHERE x > ?1", {int64_t{1}}},
                 {"DELETE FROM t WHERE x = ?1", {int64_t{99}}},
                 {"DELETE FROM t WHERE x >= ?1", {int64_t{13}}},
                 {"INSERT INTO t SELECT x FROM t", {}}}) {
          absl::StatusOr<int64_t> n = s.Execute("count", sql, params);
          if (!n.ok()) return n.status();
          counts.push_back(*n);
        }
        return absl::OkStatus();
      });
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(counts, (std::vector<int64_t>{4, 3, 0, 2, 2}));
  EXPECT_EQ(Scalar("SELECT string_agg(x::text, ',' ORDER BY x) FROM t"), "1,1,12,12");
}

TEST_F(PostgresDatabaseTest, ErrorsMapToTheCodesOfSqlH) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  Admin(
      "CREATE TABLE p (id BIGINT PRIMARY KEY);"
      "CREATE TABLE c (id BIGINT PRIMARY KEY, p BIGINT REFERENCES p (id), n BIGINT NOT NULL);"
      "INSERT INTO p VALUES (1);");
  absl::Status st = Exec(*d, "INSERT INTO p VALUES (?1)", {int64_t{1}});
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "test: duplicate key value")) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "(SQLSTATE 23505)")) << st;
  EXPECT_FALSE(IsDatabaseFault(st));

  st = Exec(*d, "INSERT INTO c VALUES (1, ?1, 0)", {int64_t{99}});
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "(SQLSTATE 23503)")) << st;

  st = Exec(*d, "INSERT INTO c VALUES (2, 1, ?1)", {sql::Value{}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "(SQLSTATE 23502)")) << st;

  st = Exec(*d, "SELEKT 1");
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(IsDatabaseFault(st)) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "(SQLSTATE 42601)")) << st;

  // A trigger's refusal (RAISE EXCEPTION, SQLSTATE P0001).
  ASSERT_TRUE(Exec(*d, kPostgresSchema).ok());
  ASSERT_TRUE(Exec(*d, "INSERT INTO audit VALUES (1, 1, 'p', 'e', 'd', ?1, ?2)",
                   {sql::Bytes{{0}}, sql::Bytes{{1}}})
                  .ok());
  st = Exec(*d, "UPDATE audit SET principal = 'mallory'");
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(st.message(), "test: audit records are append-only (SQLSTATE P0001)");
  EXPECT_EQ(Scalar("SELECT principal FROM audit"), "p");
}

TEST_F(PostgresDatabaseTest, FailedFunctionRollsBackEverything) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  Admin("CREATE TABLE t (x BIGINT)");
  int calls = 0;
  const absl::Status st = d->Transact("t", sql::Access::kWrite, [&](sql::Session& s) {
    ++calls;
    EXPECT_TRUE(s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{1}}).ok());
    EXPECT_TRUE(s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{2}}).ok());
    return absl::NotFoundError("the caller changed its mind");
  });
  EXPECT_EQ(st, absl::NotFoundError("the caller changed its mind"));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(Scalar("SELECT count(*) FROM t"), "0");

  // A statement failed but fn returned OK: PostgreSQL aborted the
  // transaction, and Transact says so instead of reporting a commit.
  const absl::Status swallowed = d->Transact("t", sql::Access::kWrite, [&](sql::Session& s) {
    EXPECT_TRUE(s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{3}}).ok());
    (void)s.Execute("t", "INSERT INTO t VALUES ('not a number')");
    return absl::OkStatus();
  });
  EXPECT_EQ(swallowed.code(), absl::StatusCode::kInvalidArgument) << swallowed;
  EXPECT_EQ(Scalar("SELECT count(*) FROM t"), "0");

  // A read-only transaction cannot write.
  const absl::Status ro = d->Transact("t", sql::Access::kRead, [&](sql::Session& s) {
    return s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{4}}).status();
  });
  EXPECT_FALSE(ro.ok());
  EXPECT_TRUE(Contains(std::string(ro.message()), "SQLSTATE 25006")) << ro;
  EXPECT_EQ(Scalar("SELECT count(*) FROM t"), "0");
}

constexpr char kRaiseSerializationFailure[] =
    "DO $$ BEGIN RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure'; "
    "END $$";

TEST_F(PostgresDatabaseTest, SerializationFailureIsRetried) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  Admin("CREATE TABLE t (x BIGINT)");
  int calls = 0;
  const absl::Status st =
      d->Transact("t", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
        ++calls;
        absl::StatusOr<int64_t> n = s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{calls}});
        if (!n.ok()) return n.status();
        if (calls < 3) return s.Execute("t", kRaiseSerializationFailure).status();
        return absl::OkStatus();
      });
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(calls, 3);
  // Only the attempt that committed left its row.
  EXPECT_EQ(Scalar("SELECT string_agg(x::text, ',') FROM t"), "3");
}

TEST_F(PostgresDatabaseTest, PermanentSerializationFailureStopsAfterMaxRetries) {
  auto d = Open(/*pool_size=*/2, /*max_retries=*/3);
  ASSERT_NE(d, nullptr);
  int calls = 0;
  const absl::Status st = d->Transact("saving", sql::Access::kWrite, [&](sql::Session& s) {
    ++calls;
    return s.Execute("t", kRaiseSerializationFailure).status();
  });
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_TRUE(IsDatabaseFault(st));
  EXPECT_TRUE(Contains(std::string(st.message()), "saving: gave up after 4 attempts")) << st;
  EXPECT_TRUE(Contains(std::string(st.message()), "simulated conflict (SQLSTATE 40001)")) << st;
}

// Two transactions taking two locks in opposite order: PostgreSQL detects
// the deadlock (40P01) and aborts one, which is rerun and then succeeds.
TEST_F(PostgresDatabaseTest, RealDeadlockIsRetried) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  std::latch both_hold_first(2);
  std::atomic<int> calls{0};
  auto worker = [&](int64_t first, int64_t second, absl::Status& out) {
    out = d->Transact("t", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
      const int call = ++calls;
      if (absl::Status st = s.LockForTransaction(first); !st.ok()) return st;
      if (call <= 2) both_hold_first.arrive_and_wait();
      return s.LockForTransaction(second);
    });
  };
  absl::Status a, b;
  std::thread ta(worker, 101, 102, std::ref(a));
  std::thread tb(worker, 102, 101, std::ref(b));
  ta.join();
  tb.join();
  EXPECT_TRUE(a.ok()) << a;
  EXPECT_TRUE(b.ok()) << b;
  EXPECT_EQ(calls.load(), 3);
}

TEST_F(PostgresDatabaseTest, TerminatedIdleConnectionIsReplaced) {
  auto d = Open(/*pool_size=*/1);
  ASSERT_NE(d, nullptr);
  auto pid_of = [&](int64_t& pid) {
    return d->Transact("pid", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
      auto r = s.Query("pid", "SELECT pg_backend_pid()");
      if (!r.ok()) return r.status();
      pid = (*r)[0].Int(0);
      return absl::OkStatus();
    });
  };
  int64_t first = 0, second = 0;
  ASSERT_TRUE(pid_of(first).ok());
  ASSERT_EQ(Scalar(StrCat("SELECT pg_terminate_backend(", first, ", 5000)")), "t");
  const absl::Status st = pid_of(second);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_NE(second, 0);
  EXPECT_NE(second, first);
}

TEST_F(PostgresDatabaseTest, ConnectionLostBeforeCommitIsRerun) {
  auto d = Open(/*pool_size=*/1);
  ASSERT_NE(d, nullptr);
  Admin("CREATE TABLE t (x BIGINT)");
  int calls = 0;
  const absl::Status st =
      d->Transact("t", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
        ++calls;
        auto pid = s.Query("pid", "SELECT pg_backend_pid()");
        if (!pid.ok()) return pid.status();
        absl::StatusOr<int64_t> n = s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{calls}});
        if (!n.ok()) return n.status();
        if (calls == 1) {
          // Killed from outside, mid-transaction.
          auto killed =
              db().Query(StrCat("SELECT pg_terminate_backend(", (*pid)[0].Int(0), ", 5000)"));
          if (!killed.ok()) return killed.status();
          return s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{100}}).status();
        }
        return absl::OkStatus();
      });
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(Scalar("SELECT string_agg(x::text, ',') FROM t"), "2");
}

// The connection dies while COMMIT runs (a deferred trigger keeps the
// commit busy; the backend is terminated meanwhile): the outcome is
// unknown, and the transaction is not rerun.
TEST_F(PostgresDatabaseTest, ConnectionLostDuringCommitIsUnknownAndNotRerun) {
  auto d = Open(/*pool_size=*/1);
  ASSERT_NE(d, nullptr);
  Admin(
      "CREATE TABLE t (x BIGINT);"
      "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;"
      "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
      "FOR EACH ROW EXECUTE FUNCTION slow();");
  std::atomic<int64_t> pid{0};
  std::thread killer([&] {
    for (int i = 0; i < 200 && pid.load() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const std::string admin = db().conninfo();
    for (int i = 0; i < 200; ++i) {
      auto r = ::keywarden::testing::PgAdminQuery(
          admin, StrCat("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ",
                        pid.load(), " AND query = 'COMMIT' AND state = 'active'"));
      if (r.ok() && !r->empty()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  int calls = 0;
  const absl::Status st =
      d->Transact("saving", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
        ++calls;
        auto p = s.Query("pid", "SELECT pg_backend_pid()");
        if (!p.ok()) return p.status();
        pid = (*p)[0].Int(0);
        return s.Execute("t", "INSERT INTO t VALUES (?1)", {int64_t{1}}).status();
      });
  killer.join();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(IsDatabaseFault(st));
  EXPECT_TRUE(Contains(std::string(st.message()), "saving: commit outcome unknown")) << st;
  // It did not commit here (the backend died before its commit record).
  EXPECT_EQ(Scalar("SELECT count(*) FROM t"), "0");
}

TEST_F(PostgresDatabaseTest, PoolNeverExceedsPoolSize) {
  constexpr int kPool = 3;
  auto d = Open(kPool);
  ASSERT_NE(d, nullptr);
  const std::string count_sql = StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keywardend' AND datname = '",
      db().name(), "'");
  std::atomic<bool> done{false};
  int most = 0;
  std::thread watcher([&] {
    while (!done.load()) {
      auto r = db().Query(count_sql);
      if (r.ok()) most = std::max(most, std::stoi((*r)[0][0]));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::vector<std::thread> workers;
  std::atomic<int> failures{0};
  for (int i = 0; i < 8; ++i) {
    workers.emplace_back([&] {
      for (int j = 0; j < 3; ++j) {
        const absl::Status st = d->Transact("sleep", sql::Access::kRead, [](sql::Session& s) {
          return s.Query("sleep", "SELECT pg_sleep(0.1)").status();
        });
        if (!st.ok()) ++failures;
      }
    });
  }
  for (std::thread& t : workers) t.join();
  done = true;
  watcher.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(most, kPool);  // used to the full, never beyond
  EXPECT_LE(std::stoi(Scalar(count_sql)), kPool);
}

TEST_F(PostgresDatabaseTest, ServerSeesApplicationNameKeywardend) {
  PostgresOptions options;
  options.connection = db().conninfo() + " application_name=something-else";
  auto d = OpenPostgresDatabase(options);
  ASSERT_TRUE(d.ok()) << d.status();
  std::string name;
  ASSERT_TRUE((*d)->Transact("name", sql::Access::kRead,
                             [&](sql::Session& s) -> absl::Status {
                               auto r =
                                   s.Query("name", "SELECT current_setting('application_name')");
                               if (!r.ok()) return r.status();
                               name = (*r)[0].Text(0);
                               return absl::OkStatus();
                             })
                  .ok());
  EXPECT_EQ(name, "keywardend");
}

TEST_F(PostgresDatabaseTest, BusyPoolTimesOutWithUnavailable) {
  PostgresOptions options;
  options.connection = db().conninfo();
  options.pool_size = 1;
  options.acquire_timeout = std::chrono::milliseconds(200);
  auto d = OpenPostgresDatabase(options);
  ASSERT_TRUE(d.ok()) << d.status();
  std::latch holding(1);
  std::thread holder([&] {
    (void)(*d)->Transact("hold", sql::Access::kRead, [&](sql::Session& s) {
      holding.count_down();
      return s.Query("hold", "SELECT pg_sleep(1)").status();
    });
  });
  holding.wait();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status st =
      (*d)->Transact("waiting", sql::Access::kRead, [](sql::Session&) { return absl::OkStatus(); });
  const auto waited = std::chrono::steady_clock::now() - start;
  holder.join();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(IsDatabaseFault(st));
  EXPECT_TRUE(Contains(std::string(st.message()), "database.pool_size")) << st;
  EXPECT_LT(waited, std::chrono::milliseconds(900));
}

// Two Database objects (two replicas) incrementing one counter with a
// read, a pause and a write: without the lock, READ COMMITTED loses updates.
TEST_F(PostgresDatabaseTest, AdvisoryLockSerializesTwoReplicas) {
  auto a = Open(2);
  auto b = Open(2);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Admin("CREATE TABLE counter (n BIGINT NOT NULL); INSERT INTO counter VALUES (0);");
  auto bump = [](sql::Database& d, std::atomic<int>& errors) {
    for (int i = 0; i < 15; ++i) {
      const absl::Status st =
          d.Transact("bump", sql::Access::kWrite, [](sql::Session& s) -> absl::Status {
            if (absl::Status l = s.LockForTransaction(sql::kCounterLock); !l.ok()) return l;
            auto r = s.Query("read", "SELECT n FROM counter");
            if (!r.ok()) return r.status();
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            return s.Execute("write", "UPDATE counter SET n = ?1", {(*r)[0].Int(0) + 1}).status();
          });
      if (!st.ok()) ++errors;
    }
  };
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  threads.emplace_back(bump, std::ref(*a), std::ref(errors));
  threads.emplace_back(bump, std::ref(*a), std::ref(errors));
  threads.emplace_back(bump, std::ref(*b), std::ref(errors));
  threads.emplace_back(bump, std::ref(*b), std::ref(errors));
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(Scalar("SELECT n FROM counter"), "60");
}

// The daemon lock: any number of keywardends share it, restore takes it
// alone. pg_locks is read through a separate connection; the key's halves
// (classid 19287 = 0x4b57, objid 1128333317 = 0x43410005) are literals.
// Advisory locks are per database: other tests' daemons on the same cluster
// hold the same key in their own databases and are not counted.
TEST_F(PostgresDatabaseTest, DaemonLockIsSharedByReplicasAndExclusiveForRestore) {
  const std::string held =
      "SELECT coalesce(string_agg(mode, ',' ORDER BY mode), '') FROM pg_locks WHERE "
      "locktype = 'advisory' AND classid = 19287 AND objid = 1128333317 AND objsubid = 1 "
      "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = "
      "current_database())";
  PostgresOptions options;
  options.connection = db().conninfo();
  {
    auto a = LockPostgresDatabase(options, PostgresLockMode::kShared, "keywardend");
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = LockPostgresDatabase(options, PostgresLockMode::kShared, "keywardend");
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(Scalar(held), "ShareLock,ShareLock");
    EXPECT_TRUE(Contains((*a)->path(), "shared")) << (*a)->path();
    auto r = LockPostgresDatabase(options, PostgresLockMode::kExclusive, "keywarden restore");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(std::string(r.status().message()),
                         "keywarden restore: keywardend is running (2 sessions: pid "))
        << r.status();
    EXPECT_EQ(Scalar(held), "ShareLock,ShareLock");  // the refused attempt holds nothing
  }
  // Released with their connections.
  EXPECT_EQ(Scalar(held), "");
  {
    auto r = LockPostgresDatabase(options, PostgresLockMode::kExclusive, "keywarden restore");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(Scalar(held), "ExclusiveLock");
    auto d = LockPostgresDatabase(options, PostgresLockMode::kShared, "keywardend");
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(std::string(d.status().message()),
                         "keywardend: keywarden restore is replacing the database"))
        << d.status();
    auto again = LockPostgresDatabase(options, PostgresLockMode::kExclusive, "keywarden restore");
    EXPECT_FALSE(again.ok());
  }
  auto d = LockPostgresDatabase(options, PostgresLockMode::kShared, "keywardend");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE((*d)->Refresh().ok());
  EXPECT_EQ(Scalar(held), "ShareLock");

  // Its connection terminated (as a server restart does): the lock is gone,
  // and Refresh takes it again on a new connection.
  const std::string terminate =
      "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = "
      "19287 AND objid = 1128333317 AND database = (SELECT oid FROM pg_database WHERE datname = "
      "current_database())";
  Admin(terminate);
  for (int i = 0; i < 100 && Scalar(held) != ""; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(Scalar(held), "");
  EXPECT_TRUE((*d)->Refresh().ok());
  EXPECT_EQ(Scalar(held), "ShareLock");

  // Lost again, and a restore took it meanwhile: Refresh says so.
  Admin(terminate);
  for (int i = 0; i < 100 && Scalar(held) != ""; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto r = LockPostgresDatabase(options, PostgresLockMode::kExclusive, "keywarden restore");
  ASSERT_TRUE(r.ok()) << r.status();
  const absl::Status lost = (*d)->Refresh();
  EXPECT_EQ(lost.code(), absl::StatusCode::kFailedPrecondition) << lost;
  EXPECT_TRUE(Contains(std::string(lost.message()), "keywarden restore is replacing the database"))
      << lost;
  EXPECT_EQ(Scalar(held), "ExclusiveLock");
}

// A keywardend that exits gives the lock back before it goes: a restore
// started the moment after finds it free. Closing the connection alone
// leaves the lock held until the server's backend gets round to exiting (a
// race this file's test above once lost on a loaded machine). Made
// deterministic here by stopping the lock's backend (SIGSTOP) while the
// lock is dropped and resuming it 300 ms later: a holder that waits for the
// server's answer returns after the resume with the lock free; one that only
// closes its connection returns at once with the lock still held.
// The second part: a server that does not answer is waited for at most two
// seconds (a stopping keywardend must not hang on a vanished server).
TEST_F(PostgresDatabaseTest, DaemonLockIsFreeTheMomentItsHolderIsGone) {
  const std::string where =
      "locktype = 'advisory' AND classid = 19287 AND objid = 1128333317 AND objsubid = 1 AND "
      "granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
  PostgresOptions options;
  options.connection = db().conninfo();
  // The backend's process, when this machine runs the server and may
  // signal it (root in CI, or the server's own user).
  auto backend_of_lock = [&]() -> pid_t {
    const pid_t pid = static_cast<pid_t>(
        std::stol(Scalar(StrCat("SELECT min(pid) FROM pg_locks WHERE ", where))));
    std::string comm;
    std::ifstream(StrCat("/proc/", pid, "/comm")) >> comm;
    if (comm.rfind("postgres", 0) != 0 || kill(pid, 0) != 0) {
      return 0;
    }
    return pid;
  };
  for (const int stop_ms : {300, 4000}) {
    auto d = LockPostgresDatabase(options, PostgresLockMode::kShared, "keywardend");
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(Scalar(StrCat("SELECT count(*) FROM pg_locks WHERE ", where)), "1");
    const pid_t pid = backend_of_lock();
    if (pid == 0) GTEST_SKIP() << "the server's backend is not a process this test may signal";
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    std::atomic<bool> resumed{false};
    std::thread resume([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(stop_ms));
      resumed = true;
      kill(pid, SIGCONT);
    });
    d->reset();  // the holder goes
    const bool returned_after_resume = resumed.load();
    const std::string still_held = Scalar(StrCat("SELECT count(*) FROM pg_locks WHERE ", where));
    resume.join();
    if (stop_ms == 300) {
      EXPECT_TRUE(returned_after_resume) << "the holder did not wait for the server's answer";
      EXPECT_EQ(still_held, "0") << "the lock was still held after its holder was gone";
      auto r = LockPostgresDatabase(options, PostgresLockMode::kExclusive, "keywarden restore");
      EXPECT_TRUE(r.ok()) << r.status();
    } else {
      EXPECT_FALSE(returned_after_resume) << "the holder waited out a server that did not answer";
      // Once resumed, the server releases it (the unlock or the closed
      // connection, whichever it reads first).
      for (int i = 0;
           i < 100 && Scalar(StrCat("SELECT count(*) FROM pg_locks WHERE ", where)) != "0"; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_EQ(Scalar(StrCat("SELECT count(*) FROM pg_locks WHERE ", where)), "0");
    }
  }
}

// ReplacePostgresContents refuses a database holding something else and
// leaves it as it was; into an empty database it loads the copy with the
// schema and the append-only triggers.
TEST_F(PostgresDatabaseTest, ReplaceContentsRefusesAForeignDatabaseAndFillsAnEmptyOne) {
  ::keywarden::testing::TempDir tmp;
  const std::string copy = tmp.File("copy.db");
  {
    auto store = OpenSqliteStore(copy);
    ASSERT_TRUE(store.ok()) << store.status();
    auto r = (*store)->AppendAudit("tester", "test.event", "{}", 1700000000);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE((*store)->PutSetting("crl.number", "42").ok());
    // A lease of a replica that ran when the backup was made.
    ASSERT_TRUE((*store)->PutSetting("lease.crl", "4102444800 host-1:8443").ok());
  }
  DatabaseOptions options;
  options.backend = "postgresql";
  options.connection = db().conninfo();

  Admin("CREATE TABLE other (x INT); INSERT INTO other VALUES (7);");
  auto refused = ReplacePostgresContents(options, copy);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(std::string(refused.status().message()), "not a keywarden CA database"))
      << refused.status();
  EXPECT_EQ(Scalar("SELECT x FROM other"), "7");
  EXPECT_EQ(Scalar("SELECT to_regclass('audit') IS NULL"), "t");

  Admin("DROP TABLE other");
  auto loaded = ReplacePostgresContents(options, copy);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->audit_records, 1);
  EXPECT_EQ(Scalar("SELECT count(*) FROM audit"), "1");
  EXPECT_EQ(Scalar("SELECT principal || ' ' || event FROM audit WHERE seq = 1"),
            "tester test.event");
  EXPECT_EQ(Scalar("SELECT value FROM settings WHERE name = 'crl.number'"), "42");
  EXPECT_EQ(Scalar("SELECT count(*) FROM settings WHERE name LIKE 'lease%'"), "0");
  EXPECT_EQ(loaded->leases_dropped, 1);
  EXPECT_EQ(Scalar("SELECT max(version) FROM keywarden_schema"), "5");
  EXPECT_EQ(Scalar("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE "
                   "'audit%'"),
            "6");
  // Replaced once more over itself: still one chain, ids continue.
  Admin(
      "INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
      "disposition_message, status_code, submitted_at, resolved_at, resolved_by) VALUES "
      "('r', 'User', 'pkcs10', '\\x00', '', 9, '', 0, 1, 0, '')");
  const std::string id = Scalar("SELECT max(id) FROM requests");
  auto again = ReplacePostgresContents(options, copy);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Scalar("SELECT count(*) FROM requests"), "0");
  EXPECT_EQ(again->next_request_id, std::stoll(id) + 1);
  Admin(
      "INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
      "disposition_message, status_code, submitted_at, resolved_at, resolved_by) VALUES "
      "('r', 'User', 'pkcs10', '\\x00', '', 9, '', 0, 1, 0, '')");
  EXPECT_EQ(Scalar("SELECT max(id) FROM requests"), std::to_string(std::stoll(id) + 1));
}

TEST_F(PostgresDatabaseTest, SslmodeRequireOverTheUnixSocketIsRefusedNamingTls) {
  PostgresOptions options;
  options.connection = db().conninfo() + " sslmode=require";
  auto d = OpenPostgresDatabase(options);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(IsDatabaseFault(d.status()));
  EXPECT_TRUE(Contains(std::string(d.status().message()), "does not use TLS")) << d.status();
}

// Two replicas starting at once, each migrating "if the schema is not there
// yet" under the migration lock: exactly one creates it; the other, once it
// has the lock, sees it (READ COMMITTED: each statement a fresh snapshot).
TEST_F(PostgresDatabaseTest, MigrationUnderTheLockRunsOnceForTwoReplicas) {
  auto a = Open(2);
  auto b = Open(2);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::atomic<int> created{0};
  std::latch go(2);
  auto migrate = [&](sql::Database& d, absl::Status& out) {
    go.arrive_and_wait();
    out = d.Transact("migrating", sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
      if (absl::Status l = s.LockForTransaction(sql::kMigrationLock); !l.ok()) return l;
      auto r = s.Query("schema?", "SELECT to_regclass('keywarden_schema') IS NOT NULL");
      if (!r.ok()) return r.status();
      if ((*r)[0].Int(0) == 1) return absl::OkStatus();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the other one waits
      if (auto e = s.Execute("schema", kPostgresSchema); !e.ok()) return e.status();
      if (auto e = s.Execute("version", "INSERT INTO keywarden_schema VALUES (?1)",
                             {int64_t{kPostgresSchemaVersion}});
          !e.ok()) {
        return e.status();
      }
      ++created;
      return absl::OkStatus();
    });
  };
  absl::Status sa, sb;
  std::thread ta(migrate, std::ref(*a), std::ref(sa));
  std::thread tb(migrate, std::ref(*b), std::ref(sb));
  ta.join();
  tb.join();
  EXPECT_TRUE(sa.ok()) << sa;
  EXPECT_TRUE(sb.ok()) << sb;
  EXPECT_EQ(created.load(), 1);
  EXPECT_EQ(Scalar("SELECT count(*) || ':' || max(version) FROM keywarden_schema"), "1:5");
}

// deploy/pg-cluster.sh makes members of kw_password_users authenticate
// with SCRAM: the password given apart from the connection string reaches
// the server, and a wrong or missing one fails without being echoed.
TEST_F(PostgresDatabaseTest, PasswordIsSentApartFromTheConnectionString) {
  const std::string role = db().name() + "_pw";
  Admin("CREATE ROLE " + role + " LOGIN PASSWORD 'correct horse' IN ROLE kw_password_users");
  struct DropRole {
    std::string admin;
    std::string role;
    ~DropRole() { (void)::keywarden::testing::PgAdminQuery(admin, "DROP ROLE " + role); }
  } drop{db().admin_conninfo(), role};
  PostgresOptions options;
  options.connection = db().conninfo() + " user=" + role;
  {
    options.password = "correct horse";
    auto d = OpenPostgresDatabase(options);
    ASSERT_TRUE(d.ok()) << d.status();
    std::string who;
    ASSERT_TRUE((*d)->Transact("who", sql::Access::kRead,
                               [&](sql::Session& s) -> absl::Status {
                                 auto r = s.Query("who", "SELECT current_user");
                                 if (!r.ok()) return r.status();
                                 who = (*r)[0].Text(0);
                                 return absl::OkStatus();
                               })
                    .ok());
    EXPECT_EQ(who, role);
  }
  options.password = "wrong horse";
  auto wrong = OpenPostgresDatabase(options);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(IsDatabaseFault(wrong.status()));
  EXPECT_TRUE(Contains(std::string(wrong.status().message()), "password authentication failed"))
      << wrong.status();
  EXPECT_FALSE(Contains(std::string(wrong.status().message()), "horse")) << wrong.status();
  options.password.clear();
  auto none = OpenPostgresDatabase(options);
  ASSERT_FALSE(none.ok());
  EXPECT_TRUE(Contains(std::string(none.status().message()), "no password supplied"))
      << none.status();
}

TEST_F(PostgresDatabaseTest, SchemaAppliesAndAuditIsAppendOnly) {
  auto d = Open();
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->Transact("migrating", sql::Access::kWrite, [](sql::Session& s) -> absl::Status {
                 if (absl::Status l = s.LockForTransaction(sql::kMigrationLock); !l.ok()) return l;
                 if (auto r = s.Execute("schema", kPostgresSchema); !r.ok()) return r.status();
                 return s
                     .Execute("version", "INSERT INTO keywarden_schema (version) VALUES (?1)",
                              {int64_t{kPostgresSchemaVersion}})
                     .status();
               }).ok());
  EXPECT_EQ(Scalar("SELECT version FROM keywarden_schema"), "5");
  // Every table and column of SQLite schema version 4, by name.
  EXPECT_EQ(Scalar("SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, "
                   "ordinal_position) FROM information_schema.columns WHERE table_schema = "
                   "current_schema() AND table_name IN ('audit', 'audit_checkpoints', "
                   "'certificates', 'settings')"),
            "audit.seq,audit.time,audit.principal,audit.event,audit.details,audit.prev_hash,"
            "audit.hash,audit_checkpoints.number,audit_checkpoints.seq,audit_checkpoints.der,"
            "certificates.rowid,certificates.serial,certificates.request_id,certificates.der,"
            "certificates.subject,certificates.cn,certificates.upn,certificates.template_name,"
            "certificates.sha1,certificates.sha256,certificates.not_before,certificates.not_after,"
            "certificates.revoked,certificates.revocation_reason,certificates.revoked_at,"
            "certificates.spki_sha256,certificates.email,settings.name,settings.value");
  // The trigger list the store checks matches what the DDL made.
  std::vector<std::string> want;
  for (const PostgresAuditTrigger& t : kPostgresAuditTriggers)
    want.push_back(StrCat(t.name, "/", t.table));
  std::sort(want.begin(), want.end());
  std::vector<std::string> have;
  ASSERT_TRUE(d->Transact("triggers", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
                 auto r = s.Query("triggers", kPostgresAuditTriggerQuery);
                 if (!r.ok()) return r.status();
                 for (const sql::Row& row : *r) have.push_back(row.Text(0) + "/" + row.Text(1));
                 return absl::OkStatus();
               }).ok());
  EXPECT_EQ(have, want);

  ASSERT_TRUE(Exec(*d, "INSERT INTO audit VALUES (1, 1, 'p', 'e', 'd', ?1, ?2)",
                   {sql::Bytes{{0}}, sql::Bytes{{1}}})
                  .ok());
  ASSERT_TRUE(Exec(*d, "INSERT INTO audit_checkpoints VALUES (1, 1, ?1)", {sql::Bytes{{2}}}).ok());
  for (const char* stmt :
       {"UPDATE audit SET details = 'x'", "DELETE FROM audit", "TRUNCATE audit"}) {
    const absl::Status st = Exec(*d, stmt);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << stmt << ": " << st;
    EXPECT_TRUE(Contains(std::string(st.message()), "audit records are append-only")) << st;
  }
  for (const char* stmt : {"UPDATE audit_checkpoints SET seq = 2", "DELETE FROM audit_checkpoints",
                           "TRUNCATE audit_checkpoints"}) {
    const absl::Status st = Exec(*d, stmt);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << stmt << ": " << st;
    EXPECT_TRUE(Contains(std::string(st.message()), "audit checkpoints are append-only")) << st;
  }
  EXPECT_EQ(Scalar("SELECT count(*) || '/' || details FROM audit GROUP BY details"), "1/d");
  EXPECT_EQ(Scalar("SELECT seq FROM audit_checkpoints"), "1");
  // certificates.rowid numbers rows in insertion order, and cannot be set.
  Admin(
      "INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
      "disposition_message, status_code, submitted_at, resolved_at, resolved_by) VALUES "
      "('u', 'User', 'cmc', '\\x00', 'CN=u', 20, '', 0, 1, 1, '')");
  EXPECT_EQ(Scalar("SELECT id FROM requests"), "1");
  EXPECT_FALSE(Exec(*d,
                    "INSERT INTO certificates (rowid, serial, der, subject, cn, upn, "
                    "template_name, sha1, sha256, not_before, not_after) VALUES "
                    "(5, 's', '\\x00', 'CN=u', 'u', '', 'User', 'a', 'b', 0, 1)")
                   .ok());
}

// -- deploy/pg-cluster.sh (clusters of their own, on ports of their own)

bool HavePostgresServer() {
  return RunCommand("ls /usr/lib/postgresql/*/bin/pg_ctl").exit_code == 0;
}
#define SKIP_WITHOUT_POSTGRES_SERVER()                                                            \
  do {                                                                                            \
    if (!HavePostgresServer()) {                                                                  \
      if (::keywarden::testing::TestPgRequired()) FAIL() << "PostgreSQL server binaries missing"; \
      GTEST_SKIP() << "PostgreSQL server binaries not installed (postgresql-15)";                 \
    }                                                                                             \
  } while (0)

TEST(PgClusterScriptTest, StartAndStopTwiceLeaveNoProcess) {
  SKIP_WITHOUT_POSTGRES_SERVER();
  ::keywarden::testing::TempDir tmp;
  ASSERT_EQ(chmod(tmp.path().c_str(), 0755), 0);
  const std::string dir = tmp.File("c");
  const std::string script = KEYWARDEN_SOURCE_DIR "/deploy/pg-cluster.sh";
  // A port of its own, so its socket never meets another cluster's.
  const std::string env = "KEYWARDEN_PG_PORT=54329 ";
  // The server's live processes: the postmaster (its pid in postmaster.pid)
  // and its children (checkpointer, writers, backends). A zombie is not
  // one: where PID 1 does not reap orphans (some containers), the exited
  // postmaster stays in the process table as <defunct>.
  auto processes = [&](const std::string& postmaster) {
    return RunCommand("ps -o stat= -p " + postmaster + " --ppid " + postmaster +
                      " | grep -vc '^Z'");
  };
  for (int round = 0; round < 2; ++round) {
    const auto start = RunCommand(env + script + " start " + dir + " </dev/null");
    ASSERT_EQ(start.exit_code, 0) << start.output;
    EXPECT_TRUE(Contains(start.output, "host=" + dir + " port=54329 user=keywarden_test"))
        << start.output;
    const std::string conninfo = start.output.substr(start.output.rfind("host="));
    auto r = ::keywarden::testing::PgAdminQuery(
        conninfo.substr(0, conninfo.find('\n')),
        "SELECT current_setting('listen_addresses') || '|' || current_setting('fsync')");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)[0][0], "|on");
    const std::vector<uint8_t> pid_file =
        ::keywarden::testing::ReadFile(dir + "/data/postmaster.pid");
    const std::string postmaster(pid_file.begin(),
                                 std::find(pid_file.begin(), pid_file.end(), '\n'));
    ASSERT_FALSE(postmaster.empty());
    EXPECT_NE(processes(postmaster).output, "0\n");  // the check sees a running server
    const auto stop = RunCommand(env + script + " stop " + dir);
    ASSERT_EQ(stop.exit_code, 0) << stop.output;
    EXPECT_EQ(processes(postmaster).output, "0\n");
    EXPECT_FALSE(::keywarden::testing::FileExists(dir + "/data/postmaster.pid"));
  }
}

// PostgreSQL restarted under a running pool: while it is down, transactions
// fail as database faults after their retries; once it is back, the pool's
// dead connections are replaced without the caller noticing.
TEST(PgClusterScriptTest, PoolSurvivesAServerRestart) {
  SKIP_WITHOUT_POSTGRES_SERVER();
  ::keywarden::testing::TempDir tmp;
  ASSERT_EQ(chmod(tmp.path().c_str(), 0755), 0);
  const std::string dir = tmp.File("c");
  const std::string script =
      "KEYWARDEN_PG_PORT=54330 " KEYWARDEN_SOURCE_DIR "/deploy/pg-cluster.sh";
  struct Stop {
    std::string command;
    ~Stop() { RunCommand(command); }
  } stop_at_end{script + " stop " + dir};
  auto start = RunCommand(script + " start " + dir + " </dev/null");
  ASSERT_EQ(start.exit_code, 0) << start.output;
  std::string conninfo = start.output.substr(start.output.rfind("host="));
  conninfo = conninfo.substr(0, conninfo.find('\n'));

  PostgresOptions options;
  options.connection = conninfo;
  options.pool_size = 3;
  options.max_retries = 2;
  auto d = OpenPostgresDatabase(options);
  ASSERT_TRUE(d.ok()) << d.status();
  auto work = [&] {
    return (*d)->Transact("counting", sql::Access::kRead, [](sql::Session& s) {
      return s.Query("count", "SELECT count(*) FROM pg_class").status();
    });
  };
  // Three connections in the pool.
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      (void)(*d)->Transact("sleep", sql::Access::kRead, [](sql::Session& s) {
        return s.Query("sleep", "SELECT pg_sleep(0.2)").status();
      });
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(work().ok());

  // Restarted with three idle connections in the pool, all now dead: each
  // is noticed before use (with max_retries = 2, spending an attempt on
  // each would fail).
  ASSERT_EQ(RunCommand(script + " stop " + dir).exit_code, 0);
  start = RunCommand(script + " start " + dir + " </dev/null");
  ASSERT_EQ(start.exit_code, 0) << start.output;
  for (int i = 0; i < 3; ++i) {
    const absl::Status up = work();
    EXPECT_TRUE(up.ok()) << i << ": " << up;
  }

  ASSERT_EQ(RunCommand(script + " stop " + dir).exit_code, 0);
  const absl::Status down = work();
  EXPECT_EQ(down.code(), absl::StatusCode::kUnavailable) << down;
  EXPECT_TRUE(IsDatabaseFault(down));
  EXPECT_TRUE(Contains(std::string(down.message()), "gave up after 3 attempts")) << down;

  start = RunCommand(script + " start " + dir + " </dev/null");
  ASSERT_EQ(start.exit_code, 0) << start.output;
  for (int i = 0; i < 5; ++i) {
    const absl::Status up = work();
    EXPECT_TRUE(up.ok()) << i << ": " << up;
  }
}

}  // namespace
}  // namespace keywarden::service
