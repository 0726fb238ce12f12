#include "tests/pg_test_util.h"

#include <libpq-fe.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>

namespace keywarden::testing {

namespace {

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultCloser {
  void operator()(PGresult* r) const { PQclear(r); }
};

std::string RandomName() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) | rd();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "kw_";
  for (int shift = 60; shift >= 0; shift -= 4) out += kHex[(v >> shift) & 0xf];
  return out;
}

}  // namespace

std::string TestPgConninfo() {
  const char* v = std::getenv("KEYWARDEN_TEST_PG");
  return v != nullptr ? v : "";
}

bool TestPgRequired() {
  const char* v = std::getenv("KEYWARDEN_REQUIRE_PG");
  return v != nullptr && std::string(v) == "1";
}

absl::StatusOr<std::vector<std::vector<std::string>>> PgAdminQuery(const std::string& conninfo,
                                                                   const std::string& sql) {
  std::unique_ptr<PGconn, ConnCloser> c(PQconnectdb(conninfo.c_str()));
  if (c == nullptr || PQstatus(c.get()) != CONNECTION_OK) {
    return absl::UnavailableError("test cluster (" + conninfo +
                                  "): " + (c ? PQerrorMessage(c.get()) : "out of memory"));
  }
  if (PQsendQuery(c.get(), sql.c_str()) == 0) {
    return absl::UnavailableError(std::string("sending: ") + PQerrorMessage(c.get()));
  }
  std::vector<std::vector<std::string>> rows;
  std::string error;
  while (PGresult* raw = PQgetResult(c.get())) {
    std::unique_ptr<PGresult, ResultCloser> r(raw);
    const ExecStatusType st = PQresultStatus(raw);
    if (st == PGRES_TUPLES_OK) {
      rows.clear();
      for (int i = 0; i < PQntuples(raw); ++i) {
        std::vector<std::string> row;
        for (int j = 0; j < PQnfields(raw); ++j) {
          row.push_back(PQgetisnull(raw, i, j) ? "<null>" : PQgetvalue(raw, i, j));
        }
        rows.push_back(std::move(row));
      }
    } else if (st != PGRES_COMMAND_OK && error.empty()) {
      error = PQresultErrorMessage(raw);
    }
  }
  if (!error.empty()) return absl::InternalError(sql + ": " + error);
  return rows;
}

absl::StatusOr<PgTestDatabase> PgTestDatabase::Create() {
  const std::string admin = TestPgConninfo();
  if (admin.empty()) return absl::NotFoundError("KEYWARDEN_TEST_PG is not set");
  const std::string name = RandomName();
  absl::StatusOr<std::vector<std::vector<std::string>>> r =
      PgAdminQuery(admin, "CREATE DATABASE " + name);
  if (!r.ok()) return r.status();
  return PgTestDatabase(admin, name);
}

PgTestDatabase::PgTestDatabase(PgTestDatabase&& other) noexcept
    : admin_(std::move(other.admin_)), name_(std::move(other.name_)) {
  other.name_.clear();
}

PgTestDatabase::~PgTestDatabase() {
  if (name_.empty() || std::getenv("KEYWARDEN_KEEP_FIXTURES") != nullptr) return;
  absl::StatusOr<std::vector<std::vector<std::string>>> r =
      PgAdminQuery(admin_, "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  // WITH (FORCE) refuses when an autovacuum worker (a superuser process)
  // is in the database, which a test that drops and creates tables can
  // start; a plain DROP DATABASE cancels autovacuum itself.
  for (int attempt = 0; !r.ok() && attempt < 5; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    r = PgAdminQuery(admin_, "DROP DATABASE IF EXISTS " + name_);
  }
  if (!r.ok()) ADD_FAILURE() << "dropping test database " << name_ << ": " << r.status();
}

void PgDatabaseTest::SetUp() {
  if (TestPgConninfo().empty()) {
    if (TestPgRequired()) {
      FAIL() << "KEYWARDEN_REQUIRE_PG=1 but KEYWARDEN_TEST_PG is not set "
                "(start a cluster with deploy/pg-cluster.sh start DIR and export its conninfo)";
    }
    GTEST_SKIP() << "no PostgreSQL test cluster: set KEYWARDEN_TEST_PG to the conninfo printed by "
                    "deploy/pg-cluster.sh start DIR";
  }
  absl::StatusOr<PgTestDatabase> db = PgTestDatabase::Create();
  ASSERT_TRUE(db.ok()) << "creating a test database: " << db.status();
  db_ = std::make_unique<PgTestDatabase>(std::move(*db));
}

}  // namespace keywarden::testing
