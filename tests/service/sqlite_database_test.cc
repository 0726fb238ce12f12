// SqliteDatabase keeps the statements it prepares: a kept statement must
// give the same answers as a fresh one whatever ran on it before (other
// parameters, a failed step, a schema change by another connection), and the
// number kept is bounded however many different statements run.
//
// It also commits write transactions in groups: units of work queued while
// another commits run together, each in a savepoint, and the outcome must be
// that of running them one by one: a failing unit leaves nothing and the
// others are kept; a failed commit fails every unit of the group.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "service/storage/sqlite_database.h"
#include "tests/test_util.h"

namespace keywarden::service::sqlite {
namespace {

using keywarden::testing::TempDir;

class SqliteDatabaseTest : public ::testing::Test {
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
                     "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; "
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

  // Runs `units` (each a write transaction) from threads of their own while
  // a first unit holds the commit for `hold`: they queue meanwhile and are
  // committed as one group after it. Returns each unit's result.
  std::vector<absl::Status> QueuedBehindAHeldCommit(
      const std::vector<std::function<absl::Status(sql::Session&)>>& units,
      std::chrono::milliseconds hold = std::chrono::milliseconds(300)) {
    std::atomic<bool> holding{false};
    std::thread first([&] {
      absl::Status st = database_->Transact("hold", sql::Access::kWrite, [&](sql::Session& s) {
        holding = true;
        std::this_thread::sleep_for(hold);
        return s
            .Execute("hold", "INSERT INTO t (id, name) VALUES (?, ?)",
                     {int64_t{1000}, std::string("holder")})
            .status();
      });
      EXPECT_TRUE(st.ok()) << st;
    });
    while (!holding) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::vector<absl::Status> results(units.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < units.size(); ++i) {
      threads.emplace_back(
          [&, i] { results[i] = database_->Transact("unit", sql::Access::kWrite, units[i]); });
    }
    first.join();
    for (auto& t : threads) t.join();
    return results;
  }

  // Inserts `first`, then `second` (id, name) in the caller's transaction.
  static absl::Status InsertTwo(sql::Session& s, const std::pair<int64_t, std::string>& first,
                                const std::pair<int64_t, std::string>& second) {
    for (const auto& [id, name] : {first, second}) {
      auto done = s.Execute("insert", "INSERT INTO t (id, name) VALUES (?, ?)", {id, name});
      if (!done.ok()) return done.status();
    }
    return absl::OkStatus();
  }

  static std::function<absl::Status(sql::Session&)> InsertUnit(int64_t id, std::string name) {
    return [id, name](sql::Session& s) {
      return s.Execute("insert", "INSERT INTO t (id, name) VALUES (?, ?)", {id, name}).status();
    };
  }
};

TEST_F(SqliteDatabaseTest, AKeptStatementAnswersForItsNewParameters) {
  for (int64_t id = 1; id <= 20; ++id) ASSERT_TRUE(Insert(id, StrCat("name-", id)).ok());
  for (int64_t id = 20; id >= 1; --id) EXPECT_EQ(NameOf(id), StrCat("name-", id));
  EXPECT_EQ(NameOf(21), "");
  // One INSERT and one SELECT, each prepared once.
  EXPECT_EQ(database_->KeptStatements(), 2u);
}

TEST_F(SqliteDatabaseTest, AFailedStepLeavesTheKeptStatementUsable) {
  ASSERT_TRUE(Insert(1, "alice").ok());
  absl::Status duplicate = Insert(2, "alice");
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_EQ(NameOf(2), "") << "the failed transaction kept nothing";
  // The same kept INSERT, reset after its failure, with other parameters.
  ASSERT_TRUE(Insert(2, "bob").ok());
  EXPECT_EQ(NameOf(2), "bob");
  // A failure in the middle of a transaction rolls back what came before it.
  absl::Status st = database_->Transact("two", sql::Access::kWrite, [&](sql::Session& s) {
    return InsertTwo(s, {3, "carol"}, {4, "bob"});
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_EQ(NameOf(3), "");
  EXPECT_EQ(NameOf(4), "");
}

TEST_F(SqliteDatabaseTest, AKeptStatementFollowsASchemaChangeByAnotherConnection) {
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

TEST_F(SqliteDatabaseTest, HowManyAreKeptIsBoundedAndTheRestStillRun) {
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

TEST_F(SqliteDatabaseTest, UnitsQueuedDuringACommitAreCommittedTogether) {
  std::vector<std::function<absl::Status(sql::Session&)>> units;
  for (int64_t id = 1; id <= 12; ++id) units.push_back(InsertUnit(id, StrCat("name-", id)));
  const auto before = database_->group_stats();
  auto results = QueuedBehindAHeldCommit(units);
  for (const auto& st : results) EXPECT_TRUE(st.ok()) << st;
  for (int64_t id = 1; id <= 12; ++id) EXPECT_EQ(NameOf(id), StrCat("name-", id));
  const auto after = database_->group_stats();
  EXPECT_EQ(after.units - before.units, 13u);
  EXPECT_EQ(after.commits - before.commits, 2u)
      << "the held unit, then the twelve queued behind it";
}

TEST_F(SqliteDatabaseTest, AFailingUnitInAGroupLeavesNothingAndTheOthersAreKept) {
  ASSERT_TRUE(Insert(50, "taken").ok());
  std::vector<std::function<absl::Status(sql::Session&)>> units;
  units.push_back(InsertUnit(1, "one"));
  // Writes a row, then fails: the row must go with it.
  units.push_back([](sql::Session& s) { return InsertTwo(s, {2, "partial"}, {3, "taken"}); });
  // Fails without writing.
  units.push_back([](sql::Session&) -> absl::Status {
    return absl::FailedPreconditionError("refused by the unit itself");
  });
  units.push_back(InsertUnit(4, "four"));
  // Sees what the units before it in the group wrote, as it would had they
  // committed one by one.
  std::atomic<int64_t> seen{-1};
  units.push_back([&seen](sql::Session& s) -> absl::Status {
    auto rows = s.Query("count", "SELECT count(*) FROM t WHERE id < 1000", {});
    if (!rows.ok()) return rows.status();
    seen = (*rows)[0].Int(0);
    return absl::OkStatus();
  });
  const auto before = database_->group_stats();
  auto results = QueuedBehindAHeldCommit(units);
  const auto after = database_->group_stats();
  ASSERT_EQ(after.commits - before.commits, 2u) << "the units did not run as one group";
  EXPECT_TRUE(results[0].ok()) << results[0];
  EXPECT_EQ(results[1].code(), absl::StatusCode::kAlreadyExists) << results[1];
  EXPECT_EQ(results[2].code(), absl::StatusCode::kFailedPrecondition) << results[2];
  EXPECT_EQ(results[2].message(), "refused by the unit itself");
  EXPECT_TRUE(results[3].ok()) << results[3];
  EXPECT_TRUE(results[4].ok()) << results[4];
  EXPECT_EQ(NameOf(1), "one");
  EXPECT_EQ(NameOf(2), "") << "the failing unit's first row was kept";
  EXPECT_EQ(NameOf(3), "");
  EXPECT_EQ(NameOf(4), "four");
  EXPECT_EQ(NameOf(50), "taken");
  // The threads queue in an order of their own; whatever it was, the last
  // unit saw row 50 and, of rows 1 and 4, those queued before it (never 2).
  EXPECT_GE(seen.load(), 1);
  EXPECT_LE(seen.load(), 3);
}

TEST_F(SqliteDatabaseTest, AFailedGroupCommitFailsEveryUnitAndKeepsNothing) {
  // A deferred foreign key is checked at COMMIT: a unit that breaks it
  // makes the group's commit fail.
  ASSERT_TRUE(database_
                  ->Transact("schema", sql::Access::kWrite,
                             [](sql::Session& s) {
                               return s
                                   .Execute("schema",
                                            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent "
                                            "INTEGER REFERENCES t(id) DEFERRABLE INITIALLY "
                                            "DEFERRED)",
                                            {})
                                   .status();
                             })
                  .ok());
  std::vector<std::function<absl::Status(sql::Session&)>> units;
  units.push_back(InsertUnit(1, "one"));
  units.push_back([](sql::Session& s) {
    return s.Execute("orphan", "INSERT INTO child (id, parent) VALUES (1, 999)", {}).status();
  });
  units.push_back(InsertUnit(3, "three"));
  auto results = QueuedBehindAHeldCommit(units);
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_FALSE(results[i].ok()) << "unit " << i << " reported committed";
    EXPECT_NE(results[i].message().find("committing"), std::string::npos) << results[i];
  }
  EXPECT_EQ(NameOf(1), "");
  EXPECT_EQ(NameOf(3), "");
  // The next unit commits normally.
  ASSERT_TRUE(Insert(5, "five").ok());
  EXPECT_EQ(NameOf(5), "five");
}

}  // namespace
}  // namespace keywarden::service::sqlite
