// The audit log against an insider with write access to the database file:
// every tamper case the outside tester tried (issue 12), run on a real
// SQLite store with real signed checkpoints, each with the verdict it must
// get stated here: from the database alone, and given the checkpoint the
// auditor exported before the tampering.
#include <sqlite3.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "pki/audit_checkpoint.h"
#include "service/storage/audit_checkpoints.h"
#include "service/storage/store.h"
#include "tests/test_util.h"

namespace keywarden::service {
namespace {

using Bytes = std::vector<uint8_t>;

std::string Hex(const Bytes& b) {
  return HexString(b);
}

absl::Status Sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  char* error = nullptr;
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  absl::Status st = absl::OkStatus();
  if (rc != SQLITE_OK) {
    st = absl::InternalError(StrCat("sqlite3: ", error ? error : sqlite3_errmsg(db), " in ", sql));
  }
  sqlite3_free(error);
  sqlite3_close_v2(db);
  return st;
}

// The CREATE statements of the triggers, to put them back after tampering
// (a careful insider leaves the schema as it was).
std::vector<std::string> TriggerSql(const std::string& path) {
  std::vector<std::string> out;
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name", -1,
                     &s, nullptr);
  while (s != nullptr && sqlite3_step(s) == SQLITE_ROW) {
    out.push_back(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)));
  }
  sqlite3_finalize(s);
  sqlite3_close_v2(db);
  return out;
}

std::string Blob(const Bytes& b) {
  return StrCat("X'", Hex(b), "'");
}

// Writes `records` as the whole audit table, hashes as given.
std::string ReplaceAllRecords(const std::vector<AuditRecord>& records) {
  std::string sql = "DELETE FROM audit;";
  for (const AuditRecord& r : records) {
    sql += StrCat(
        "INSERT INTO audit (seq, time, principal, event, details, prev_hash, hash) "
        "VALUES (",
        r.seq, ", ", r.time, ", '", r.principal, "', '", r.event, "', '", r.details, "', ",
        Blob(r.prev_hash), ", ", Blob(r.hash), ");");
  }
  return sql;
}

// What an insider who knows the hash function does after an edit: every
// prev_hash and hash recomputed from the first record on.
void Rechain(std::vector<AuditRecord>& records) {
  Bytes prev(32, 0);
  for (AuditRecord& r : records) {
    r.prev_hash = prev;
    r.hash = AuditHash(r);
    prev = r.hash;
  }
}

// How the verdict must come out.
enum class Verdict { kOk, kUnconfirmed, kBroken };

struct Expect {
  Verdict verdict;
  std::string says;  // for kBroken: part of the problem; for kUnconfirmed: "" (count below)
  int64_t unconfirmed = 0;
};

struct Fixture;
struct TamperCase {
  std::string name;
  // Tampers with the database file at `path` (store closed). Returns the
  // SQL to run with the triggers out of the way.
  std::function<std::string(Fixture&)> tamper;
  Expect db_only;    // audit verify --database --ca-cert
  Expect with_held;  // ... --checkpoint (the auditor's copy of checkpoint 4)
  bool restore_triggers = true;
};

void PrintTo(const TamperCase& c, std::ostream* os) {
  *os << c.name;
}

// 20 records, checkpoints 1..4 at seqs 5, 10, 15, 20 (the head signed, as
// at a clean stop); the auditor exported checkpoint 4.
struct Fixture {
  testing::TempDir dir;
  std::string path = dir.path() + "/ca.db";
  ossl::UniquePtr<EVP_PKEY> key = testing::SoftwareRsaKey();
  ossl::UniquePtr<X509> ca = testing::SelfSignedCa(nullptr, key.get(), "Audit Test CA");
  ossl::UniquePtr<EVP_PKEY> other_key = testing::SoftwareRsaKey();
  ossl::UniquePtr<X509> other_ca =
      testing::SelfSignedCa(nullptr, other_key.get(), "Audit Test CA");  // same name, other key
  std::vector<AuditRecord> records;                                      // as written
  std::vector<StoredCheckpoint> checkpoints;                             // as written
  Bytes held;

  Bytes Sign(EVP_PKEY* k, X509* cert, int64_t number, const AuditRecord& head,
             const Bytes& previous_der) {
    pki::AuditCheckpointBody body;
    body.number = number;
    body.seq = head.seq;
    body.hash = head.hash;
    body.time = head.time;
    if (!previous_der.empty()) body.previous = pki::AuditCheckpointDigest(previous_der);
    auto der = pki::BuildAuditCheckpoint(nullptr, nullptr, k, cert, body);
    EXPECT_TRUE(der.ok()) << der.status();
    return der.value_or(Bytes{});
  }

  void Build() {
    auto store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int i = 1; i <= 20; ++i) {
      auto r = (*store)->AppendAudit(i % 3 ? "officer" : "system", "request.issued",
                                     StrCat("{\"n\":", i, "}"), 1000 + i);
      ASSERT_TRUE(r.ok()) << r.status();
      records.push_back(*r);
      if (i % 5 == 0) {
        const int64_t number = static_cast<int64_t>(checkpoints.size()) + 1;
        StoredCheckpoint c{number, r->seq,
                           Sign(key.get(), ca.get(), number, *r,
                                checkpoints.empty() ? Bytes{} : checkpoints.back().der)};
        ASSERT_TRUE((*store)->AppendAuditCheckpoint(c).ok());
        checkpoints.push_back(c);
      }
    }
    held = checkpoints.back().der;
  }

  absl::StatusOr<AuditVerdict> Verify(bool with_held) {
    auto store = OpenSqliteStore(path);
    if (!store.ok()) return store.status();
    return VerifyStoredAudit(**store, ca.get(),
                             with_held ? std::optional<Bytes>(held) : std::nullopt);
  }
};

void Check(const absl::StatusOr<AuditVerdict>& v, const Expect& e, const std::string& how) {
  ASSERT_TRUE(v.ok()) << how << ": " << v.status();
  switch (e.verdict) {
    case Verdict::kOk:
      EXPECT_TRUE(v->ok && v->unconfirmed == 0) << how << ": " << DescribeVerdict(*v);
      break;
    case Verdict::kUnconfirmed:
      EXPECT_TRUE(v->ok) << how << ": " << DescribeVerdict(*v);
      EXPECT_EQ(v->unconfirmed, e.unconfirmed) << how << ": " << DescribeVerdict(*v);
      break;
    case Verdict::kBroken:
      EXPECT_FALSE(v->ok) << how << ": expected broken (" << e.says
                          << "), got: " << DescribeVerdict(*v);
      EXPECT_NE(v->problem.find(e.says), std::string::npos)
          << how << ": the problem \"" << v->problem << "\" does not say \"" << e.says << "\"";
      break;
  }
}

Expect Broken(std::string says) {
  return {Verdict::kBroken, std::move(says)};
}
Expect Unconfirmed(int64_t n) {
  return {Verdict::kUnconfirmed, "", n};
}
const Expect kOk{Verdict::kOk, ""};

// Records 1..n as written, edited by `edit`, rechained.
std::function<std::string(Fixture&)> EditAndRechain(
    std::function<void(std::vector<AuditRecord>&)> edit) {
  return [edit](Fixture& f) {
    std::vector<AuditRecord> r = f.records;
    edit(r);
    Rechain(r);
    return ReplaceAllRecords(r);
  };
}

std::function<std::string(Fixture&)> Just(std::string sql) {
  return [sql](Fixture&) { return sql; };
}

const TamperCase kCases[] = {
    // -- nothing done: the baseline must pass, or no case below means anything
    {"Untouched", Just(""), kOk, kOk},
    // -- truncation (the tester's 1, 5, half, all)
    {"TruncateNewest1", Just("DELETE FROM audit WHERE seq > 19;"),
     Broken("records 20..20 were removed (the log was truncated)"),
     Broken("records 20..20 were removed")},
    {"TruncateNewest5", Just("DELETE FROM audit WHERE seq > 15;"),
     Broken("records 16..20 were removed"), Broken("records 16..20 were removed")},
    {"TruncateHalf", Just("DELETE FROM audit WHERE seq > 10;"),
     Broken("records 11..15 were removed"), Broken("records 11..15 were removed")},
    {"TruncateAll", Just("DELETE FROM audit;"), Broken("records 1..5 were removed"),
     Broken("records 1..5 were removed")},
    // -- deletions and edits without recomputing
    {"DeleteMiddleRecord", Just("DELETE FROM audit WHERE seq = 7;"),
     Broken("audit chain broken at seq 7: record missing"), Broken("seq 7: record missing")},
    {"DeleteWithRenumbering",
     Just("DELETE FROM audit WHERE seq = 7; UPDATE audit SET seq = -seq WHERE seq > 7; "
          "UPDATE audit SET seq = -seq - 1 WHERE seq < 0;"),
     Broken("audit chain broken at seq 7"), Broken("audit chain broken at seq 7")},
    {"EditDetails", Just("UPDATE audit SET details = '{\"n\":\"forged\"}' WHERE seq = 12;"),
     Broken("seq 12: record edited"), Broken("seq 12: record edited")},
    {"EditPrincipal", Just("UPDATE audit SET principal = 'intruder' WHERE seq = 12;"),
     Broken("seq 12: record edited"), Broken("seq 12: record edited")},
    {"EditEvent", Just("UPDATE audit SET event = 'request.denied' WHERE seq = 12;"),
     Broken("seq 12: record edited"), Broken("seq 12: record edited")},
    {"EditTime", Just("UPDATE audit SET time = 1 WHERE seq = 12;"), Broken("seq 12: record edited"),
     Broken("seq 12: record edited")},
    {"Reorder",
     Just("UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE "
          "seq = 5; UPDATE audit SET seq = 5 WHERE seq = -3;"),
     Broken("seq 3: records reordered"), Broken("seq 3: records reordered")},
    // -- edits with every later hash recomputed: only a signature catches them
    {"EditDetailsRecomputed",
     EditAndRechain([](std::vector<AuditRecord>& r) { r[11].details = "{\"n\":\"forged\"}"; }),
     Broken("record seq 15 has hash"), Broken("record seq 15 has hash")},
    {"EditPrincipalRecomputed",
     EditAndRechain([](std::vector<AuditRecord>& r) { r[1].principal = "intruder"; }),
     Broken("checkpoint 1 signed"), Broken("checkpoint 1 signed")},
    {"EditNewestRecomputed",
     EditAndRechain([](std::vector<AuditRecord>& r) { r[19].event = "request.denied"; }),
     Broken("record seq 20 has hash"), Broken("record seq 20 has hash")},
    {"ReorderRecomputed", EditAndRechain([](std::vector<AuditRecord>& r) {
       std::swap(r[2], r[4]);
       r[2].seq = 3;
       r[4].seq = 5;
     }),
     Broken("records up to seq 5 were rewritten"), Broken("records up to seq 5 were rewritten")},
    {"DeleteWithRenumberingRecomputed", EditAndRechain([](std::vector<AuditRecord>& r) {
       r.erase(r.begin() + 6);
       for (size_t i = 0; i < r.size(); ++i) r[i].seq = static_cast<int64_t>(i) + 1;
     }),
     Broken("records up to seq 10 were rewritten"), Broken("records up to seq 10 were rewritten")},
    {"ForgedInsertInTheMiddleRecomputed", EditAndRechain([](std::vector<AuditRecord>& r) {
       AuditRecord forged = r[7];
       forged.event = "request.approved";
       r.insert(r.begin() + 8, forged);
       r.pop_back();  // keeps 20 records: the count tells nothing either
       for (size_t i = 0; i < r.size(); ++i) r[i].seq = static_cast<int64_t>(i) + 1;
     }),
     Broken("records up to seq 10 were rewritten"), Broken("records up to seq 10 were rewritten")},
    {"WholeChainRewritten", EditAndRechain([](std::vector<AuditRecord>& r) {
       for (auto& x : r) x.principal = "nobody";
     }),
     Broken("records up to seq 5 were rewritten"), Broken("records up to seq 5 were rewritten")},
    // -- forged appends: chained correctly, but no signature vouches for them
    {"ForgedAppendWithCorrectHash",
     [](Fixture& f) {
       AuditRecord forged = f.records.back();
       forged.seq = 21;
       forged.details = "{\"n\":\"forged\"}";
       forged.prev_hash = f.records.back().hash;
       forged.hash = AuditHash(forged);
       return ReplaceAllRecords({forged}).substr(std::string("DELETE FROM audit;").size());
     },
     Unconfirmed(1), Unconfirmed(1)},
    // -- the schema's own guard
    {"TriggersDropped", Just(""), Broken("audit_no_update (missing)"),
     Broken("audit_checkpoints_no_delete (missing)"), /*restore_triggers=*/false},
    // -- the checkpoints themselves
    {"DeleteMiddleCheckpoint", Just("DELETE FROM audit_checkpoints WHERE number = 2;"),
     Broken("checkpoint 2 is missing"), Broken("checkpoint 2 is missing")},
    {"DeleteNewestCheckpoint", Just("DELETE FROM audit_checkpoints WHERE number = 4;"),
     // From the database alone this looks like records not yet signed;
     // the auditor's copy shows the checkpoint was removed.
     Unconfirmed(5), Broken("your checkpoint 4 (seq 20) is not in the database")},
    {"DeleteNewestCheckpointAndTruncate",
     Just("DELETE FROM audit_checkpoints WHERE number = 4; DELETE FROM audit WHERE seq > 15;"),
     // Undetectable without an anchor held outside the database (the
     // reason auditors export checkpoints); detected with it.
     kOk, Broken("your checkpoint 4 (seq 20) is not in the database")},
    {"DeleteAllCheckpointsAndTruncate",
     Just("DELETE FROM audit_checkpoints; DELETE FROM audit WHERE seq > 3;"),
     // Looks like a young log nobody has signed yet.
     Unconfirmed(3), Broken("your checkpoint 4 (seq 20) is not in the database")},
    {"EditCheckpointSeq", Just("UPDATE audit_checkpoints SET seq = 12 WHERE number = 3;"),
     Broken("checkpoint 3 (stored as number 3, seq 12) is signed as number 3, seq 15"),
     Broken("checkpoint 3 (stored as number 3, seq 12)")},
    {"EditCheckpointBytes",
     [](Fixture& f) {
       Bytes der = f.checkpoints[2].der;
       der[der.size() - 10] ^= 0x01;  // inside the signature
       return StrCat("UPDATE audit_checkpoints SET der = ", Blob(der), " WHERE number = 3;");
     },
     Broken("checkpoint 3: audit checkpoint: the signature does not verify"),
     Broken("checkpoint 3: audit checkpoint: the signature does not verify")},
    {"ReplaceCheckpointSignatureWithAnotherKeys",
     [](Fixture& f) {
       // The same body signed by a key of the insider's (a CA certificate
       // of the same name): the whole log rewritten and "re-signed".
       Bytes der =
           f.Sign(f.other_key.get(), f.other_ca.get(), 3, f.records[14], f.checkpoints[1].der);
       return StrCat("UPDATE audit_checkpoints SET der = ", Blob(der), " WHERE number = 3;");
     },
     Broken("checkpoint 3: audit checkpoint: the signature does not verify with the CA"),
     Broken("checkpoint 3: audit checkpoint: the signature does not verify with the CA")},
    {"ForgedAppendAndCheckpointFromAnotherKey",
     [](Fixture& f) {
       AuditRecord forged = f.records.back();
       forged.seq = 21;
       forged.prev_hash = f.records.back().hash;
       forged.hash = AuditHash(forged);
       Bytes der = f.Sign(f.other_key.get(), f.other_ca.get(), 5, forged, f.checkpoints[3].der);
       return ReplaceAllRecords({forged}).substr(std::string("DELETE FROM audit;").size()) +
              StrCat("INSERT INTO audit_checkpoints (number, seq, der) VALUES (5, 21, ", Blob(der),
                     ");");
     },
     Broken("checkpoint 5: audit checkpoint: the signature does not verify"),
     Broken("checkpoint 5: audit checkpoint: the signature does not verify")},
    {"SwapCheckpoints",
     [](Fixture& f) {
       return StrCat("UPDATE audit_checkpoints SET der = ", Blob(f.checkpoints[2].der),
                     " WHERE number = 2; UPDATE audit_checkpoints SET der = ",
                     Blob(f.checkpoints[1].der), " WHERE number = 3;");
     },
     Broken("checkpoint 2 (stored as number 2, seq 10) is signed as number 3, seq 15"),
     Broken("checkpoint 2 (stored as number 2, seq 10) is signed as number 3")},
    {"OlderCheckpointReplacesNewest",
     // Truncated to seq 15 and checkpoint 4 replaced by checkpoint 3's
     // bytes: numbering gives it away.
     [](Fixture& f) {
       return StrCat("DELETE FROM audit WHERE seq > 15; UPDATE audit_checkpoints SET der = ",
                     Blob(f.checkpoints[2].der), ", seq = 15 WHERE number = 4;");
     },
     Broken("checkpoint 4 (stored as number 4, seq 15) is signed as number 3"),
     Broken("checkpoint 4 (stored as number 4, seq 15) is signed as number 3")},
};

class AuditTamperTest : public ::testing::TestWithParam<TamperCase> {};

TEST_P(AuditTamperTest, VerdictIsAsStated) {
  const TamperCase& c = GetParam();
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(f.Build());
  {
    // Before tampering the log verifies, in both ways.
    Check(f.Verify(false), kOk, "before tampering");
    Check(f.Verify(true), kOk, "before tampering, with the held checkpoint");
  }
  const std::vector<std::string> triggers = TriggerSql(f.path);
  ASSERT_EQ(triggers.size(), 4u);
  std::string sql;
  for (const char* name : {"audit_no_update", "audit_no_delete", "audit_checkpoints_no_update",
                           "audit_checkpoints_no_delete"}) {
    sql += StrCat("DROP TRIGGER ", name, ";");
  }
  sql += c.tamper(f);
  if (c.restore_triggers) {
    for (const std::string& t : triggers) sql += t + ";";
  }
  ASSERT_TRUE(Sql(f.path, sql).ok()) << Sql(f.path, "SELECT 1");
  Check(f.Verify(false), c.db_only, "from the database alone");
  Check(f.Verify(true), c.with_held, "given the auditor's checkpoint 4");
}

INSTANTIATE_TEST_SUITE_P(TesterCases, AuditTamperTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<TamperCase>& param) {
                           return param.param.name;
                         });

TEST(AuditCheckpointStoreTest, TriggersArePresentOnAFreshStoreAndCheckpointsAreAppendOnly) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(f.Build());
  auto store = OpenSqliteStore(f.path);
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE((*store)->admin().CheckAuditTriggers().ok())
      << (*store)->admin().CheckAuditTriggers();
  // Through SQL with the triggers in place, checkpoints cannot be changed.
  EXPECT_FALSE(Sql(f.path, "DELETE FROM audit_checkpoints WHERE number = 1;").ok());
  EXPECT_FALSE(Sql(f.path, "UPDATE audit_checkpoints SET seq = 1 WHERE number = 4;").ok());
  auto last = (*store)->LastAuditCheckpoint();
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->number, 4);
  EXPECT_EQ(last->seq, 20);
  EXPECT_EQ(last->der, f.held);
  // The store refuses a number that is taken.
  absl::Status again = (*store)->AppendAuditCheckpoint(f.checkpoints[0]);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
  // An altered trigger is reported too (same name, does nothing).
  ASSERT_TRUE(Sql(f.path,
                  "DROP TRIGGER audit_no_delete; CREATE TRIGGER audit_no_delete BEFORE DELETE "
                  "ON audit BEGIN SELECT 1; END;")
                  .ok());
  absl::Status altered = (*store)->admin().CheckAuditTriggers();
  EXPECT_EQ(altered.code(), absl::StatusCode::kDataLoss) << altered;
  EXPECT_NE(altered.message().find("audit_no_delete (altered)"), std::string::npos) << altered;
}

TEST(AuditCheckpointStoreTest, SequenceNumbersAreNeverReusedAfterTruncation) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(f.Build());
  ASSERT_TRUE(Sql(f.path, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 12;").ok());
  auto store = OpenSqliteStore(f.path);
  ASSERT_TRUE(store.ok());
  // The highest checkpointed seq is 20: the next record is 21, not 13.
  auto next = (*store)->AppendAudit("system", "audit.broken_accepted", "{}", 5000);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->seq, 21);
  EXPECT_EQ(next->prev_hash, f.records[11].hash);
  // ... and the gap stays visible.
  auto v = VerifyStoredAudit(**store, f.ca.get());
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(v->ok);
  EXPECT_NE(v->problem.find("seq 13"), std::string::npos) << v->problem;
}

TEST(AuditCheckpointTest, OpensWithOpensslAndRejectsAnotherCa) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(f.Build());
  const std::string der = f.dir.path() + "/cp.der", pem = f.dir.path() + "/ca.pem",
                    other = f.dir.path() + "/other.pem";
  testing::WriteFile(der, f.held);
  testing::WriteFile(pem, testing::ToPem(f.ca.get()));
  testing::WriteFile(other, testing::ToPem(f.other_ca.get()));
  auto ok = testing::RunCommand(
      StrCat("openssl cms -verify -binary -inform DER -purpose any -in ", der, " -CAfile ", pem));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(
      ok.output.find(StrCat("\"number\":4,\"seq\":20,\"hash\":\"", Hex(f.records[19].hash), "\"")),
      std::string::npos)
      << ok.output;
  auto bad = testing::RunCommand(
      StrCat("openssl cms -verify -binary -inform DER -purpose any -in ", der, " -CAfile ", other));
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  // The parser refuses it with the other CA's certificate as well.
  auto parsed = pki::ParseAuditCheckpoint(f.held, f.other_ca.get());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss) << parsed.status();
}

}  // namespace
}  // namespace keywarden::service

namespace keywarden::service {
namespace {

// Interop both ways, and the body's canonical form: a body signed by
// `openssl cms -sign` with the CA key is accepted when it is exactly the
// canonical text, and refused otherwise (a checkpoint means one thing).
TEST(AuditCheckpointTest, BodySignedByOpensslIsAcceptedOnlyInCanonicalForm) {
  Fixture f;
  const std::string ca = f.dir.path() + "/ca.pem", key = f.dir.path() + "/ca.key";
  testing::WriteFile(ca, testing::ToPem(f.ca.get()));
  testing::WriteFile(key, testing::PrivateKeyPem(f.key.get()));
  const std::string hash(64, 'a');
  auto sign = [&](const std::string& name, const std::string& body) -> Bytes {
    const std::string in = f.dir.path() + "/" + name + ".json",
                      out = f.dir.path() + "/" + name + ".der";
    testing::WriteFile(in, body);
    auto r = testing::RunCommand(
        StrCat("openssl cms -sign -binary -nodetach -md sha256 -outform DER -signer ", ca,
               " -inkey ", key, " -in ", in, " -out ", out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return testing::ReadFile(out);
  };
  const std::string canonical =
      StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":1,\"seq\":7,",
             "\"hash\":\"", hash, "\",\"time\":1700000000,\"previous\":\"\"}");
  auto good = pki::ParseAuditCheckpoint(sign("good", canonical), f.ca.get());
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->number, 1);
  EXPECT_EQ(good->seq, 7);
  EXPECT_EQ(Hex(good->hash), hash);
  EXPECT_EQ(good->time, 1700000000);
  EXPECT_TRUE(good->previous.empty());

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"space", StrCat("{\"type\": \"keywarden-audit-checkpoint\",\"version\":1,\"number\":1,",
                       "\"seq\":7,\"hash\":\"", hash, "\",\"time\":1,\"previous\":\"\"}")},
      {"upper",
       StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":1,",
              "\"seq\":7,\"hash\":\"", std::string(64, 'A'), "\",\"time\":1,\"previous\":\"\"}")},
      {"version2", StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":2,\"number\":1,",
                          "\"seq\":7,\"hash\":\"", hash, "\",\"time\":1,\"previous\":\"\"}")},
      {"trailing", canonical + "\n"},
      {"leadingzero",
       StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,",
              "\"number\":01,\"seq\":7,\"hash\":\"", hash, "\",\"time\":1,\"previous\":\"\"}")},
      {"noprevious", StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":2,",
                            "\"seq\":7,\"hash\":\"", hash, "\",\"time\":1,\"previous\":\"\"}")},
      {"shorthash", StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":1,",
                           "\"seq\":7,\"hash\":\"abcd\",\"time\":1,\"previous\":\"\"}")},
  };
  for (const auto& [name, body] : bad) {
    auto parsed = pki::ParseAuditCheckpoint(sign(name, body), f.ca.get());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss) << name << ": " << body;
  }
}

}  // namespace
}  // namespace keywarden::service
