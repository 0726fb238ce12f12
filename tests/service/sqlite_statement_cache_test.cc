// SqliteDatabase keeps the statements it prepares: a kept statement must
// give the same answers as a fresh one whatever ran on it before (other
// parameters, a failed step, a schema change by another connection), and the
// number kept is bounded however many different statements run.
#include <sqlite3.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "service/storage/sqlite_database.h"
#include "tests/test_util.h"

namespace keywarden::service::sqlite {
namespace {

using keywarden::testing::TempDir;

class StatementCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.File("cache.db");
    sqlite3* raw = nullptr;
    ASSERT_EQ(
        sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr),
        SQLITE_OK);
    Connection db(raw);
    sqlite3_extended_result_codes(db.get(), 1);  // as the store opens it
    ASSERT_TRUE(Exec(db.get(),
                     "PRAGMA journal_mode = WAL; "
                     "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
                     "schema")
                    .ok());
    database_ = std::make_unique<SqliteDatabase>(std::move(db));
  }

  absl::Status Insert(int64_t id, const std::string& name) {
    return database_->Transact("insert", sql::Access::kWrite, [&](sql::Session& s) {
      return s.Execute("insert", "INSERT INTO t (id, name) VALUES (?, ?)", {id, name}).status();
    });
  }

  // The name of row `id`, "" when there is none.
  std::string NameOf(int64_t id) {
    std::string name;
    absl::Status st = database_->Transact("read", sql::Access::kRead, [&](sql::Session& s) {
      auto rows = s.Query("read", "SELECT name FROM t WHERE id = ?", {id});
      if (!rows.ok()) return rows.status();
      if (!rows->empty()) name = (*rows)[0].Text(0);
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
    return name;
  }

  TempDir dir_;
  std::string path_;
  std::unique_ptr<SqliteDatabase> database_;
};

TEST_F(StatementCacheTest, AKeptStatementAnswersForItsNewParameters) {
  for (int64_t id = 1; id <= 20; ++id) ASSERT_TRUE(Insert(id, StrCat("name-", id)).ok());
  for (int64_t id = 20; id >= 1; --id) EXPECT_EQ(NameOf(id), StrCat("name-", id));
  EXPECT_EQ(NameOf(21), "");
  // One INSERT and one SELECT, each prepared once.
  EXPECT_EQ(database_->KeptStatements(), 2u);
}

TEST_F(StatementCacheTest, AFailedStepLeavesTheKeptStatementUsable) {
  ASSERT_TRUE(Insert(1, "alice").ok());
  absl::Status duplicate = Insert(2, "alice");
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_EQ(NameOf(2), "") << "the failed transaction kept nothing";
  // The same kept INSERT, reset after its failure, with other parameters.
  ASSERT_TRUE(Insert(2, "bob").ok());
  EXPECT_EQ(NameOf(2), "bob");
  // A failure in the middle of a transaction rolls back what came before it.
  absl::Status st = database_->Transact("two", sql::Access::kWrite, [&](sql::Session& s) {
    auto first = s.Execute("first", "INSERT INTO t (id, name) VALUES (?, ?)",
                           {int64_t{3}, std::string("carol")});
    if (!first.ok()) return first.status();
    return s
        .Execute("second", "INSERT INTO t (id, name) VALUES (?, ?)",
                 {int64_t{4}, std::string("bob")})
        .status();
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_EQ(NameOf(3), "");
  EXPECT_EQ(NameOf(4), "");
}

TEST_F(StatementCacheTest, AKeptStatementFollowsASchemaChangeByAnotherConnection) {
  ASSERT_TRUE(Insert(1, "alice").ok());
  auto star = [&]() {
    std::vector<sql::Row> out;
    absl::Status st = database_->Transact("star", sql::Access::kRead, [&](sql::Session& s) {
      auto rows = s.Query("star", "SELECT * FROM t ORDER BY id", {});
      if (!rows.ok()) return rows.status();
      out = std::move(*rows);
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
    return out;
  };
  ASSERT_EQ(star().at(0).size(), 2u);
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  Connection other(raw);
  ASSERT_TRUE(Exec(other.get(), "ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'n'", "alter").ok());
  auto rows = star();
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(rows[0].size(), 3u) << "the kept SELECT * was prepared again for the new schema";
  EXPECT_EQ(rows[0].Text(2), "n");
}

TEST_F(StatementCacheTest, HowManyAreKeptIsBoundedAndTheRestStillRun) {
  ASSERT_TRUE(Insert(1, "alice").ok());
  const size_t distinct = StatementCache::kMaxStatements + 40;
  for (size_t i = 0; i < distinct; ++i) {
    // A different text each time (as a query built with a varying literal
    // would be): every one must run, kept or not.
    int64_t got = -1;
    absl::Status st = database_->Transact("n", sql::Access::kRead, [&](sql::Session& s) {
      auto rows =
          s.Query("n", StrCat("SELECT id + ", i, " FROM t WHERE name = ?"), {std::string("alice")});
      if (!rows.ok()) return rows.status();
      if (rows->size() != 1) return absl::InternalError("expected one row");
      got = (*rows)[0].Int(0);
      return absl::OkStatus();
    });
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(got, static_cast<int64_t>(1 + i));
  }
  EXPECT_EQ(database_->KeptStatements(), StatementCache::kMaxStatements);
  // A statement kept before the cache filled is still the one used.
  EXPECT_EQ(NameOf(1), "alice");
}

}  // namespace
}  // namespace keywarden::service::sqlite
