// PostgreSQL for tests: a fresh database per test on the cluster named by
// KEYWARDEN_TEST_PG (deploy/pg-cluster.sh prints it; deploy/test.sh exports
// it). Without it the tests skip, unless KEYWARDEN_REQUIRE_PG=1 (CI), when
// they fail.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::testing {

// KEYWARDEN_TEST_PG: a key=value libpq conninfo of a role that may create
// databases ("" when unset).
std::string TestPgConninfo();
// KEYWARDEN_REQUIRE_PG=1: a missing cluster is a failure, not a skip.
bool TestPgRequired();

// Runs `sql` (one statement or a script) on `conninfo` through libpq alone,
// for tests to set up and check state without the code under test. Rows of
// the last statement as text (NULL as "<null>").
absl::StatusOr<std::vector<std::vector<std::string>>> PgAdminQuery(const std::string& conninfo,
                                                                   const std::string& sql);

// A database kw_<64 random bits> created on the test cluster, dropped (with
// its connections) at destruction.
class PgTestDatabase {
 public:
  static absl::StatusOr<PgTestDatabase> Create();
  PgTestDatabase(PgTestDatabase&& other) noexcept;
  PgTestDatabase& operator=(PgTestDatabase&&) = delete;
  ~PgTestDatabase();

  const std::string& name() const { return name_; }
  // The cluster's conninfo with dbname= this database.
  std::string conninfo() const { return admin_ + " dbname=" + name_; }
  const std::string& admin_conninfo() const { return admin_; }
  absl::StatusOr<std::vector<std::vector<std::string>>> Query(const std::string& sql) const {
    return PgAdminQuery(conninfo(), sql);
  }

 private:
  PgTestDatabase(std::string admin, std::string name)
      : admin_(std::move(admin)), name_(std::move(name)) {}
  std::string admin_;
  std::string name_;
};

// A test fixture with its own database: skips (or, with
// KEYWARDEN_REQUIRE_PG=1, fails) when there is no test cluster.
class PgDatabaseTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override { db_.reset(); }
  const PgTestDatabase& db() const { return *db_; }

 private:
  std::unique_ptr<PgTestDatabase> db_;
};

}  // namespace keywarden::testing
