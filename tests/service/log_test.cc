// The journal entry keywardend sends under systemd (service/observe/log.h),
// as a pure function: the fields, their names and values, a client-chosen
// value kept whole in its own field; and the JOURNAL_STREAM check against
// the file stderr really is (dev:ino from stat(1), not from the code under
// test). journald itself is not needed (and not faked).
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "service/observe/log.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

namespace log = service::log;

std::map<std::string, std::string> AsMap(const std::vector<std::string>& entry) {
  std::map<std::string, std::string> out;
  for (const std::string& f : entry) {
    const size_t eq = f.find('=');
    EXPECT_NE(eq, std::string::npos) << f;
    EXPECT_EQ(out.count(f.substr(0, eq)), 0u) << "field twice: " << f;
    out[f.substr(0, eq)] = f.substr(eq + 1);
  }
  return out;
}

TEST(JournalFieldsTest, AnRpcLineHasMessagePrioritySyslogIdentifierAndKeywardenFields) {
  const nlohmann::json fields = {{"method", "/keywarden.v1.Enrollment/Submit"},
                                 {"principal", "CN=alice,O=corp"},
                                 {"status", "FAILED_PRECONDITION"},
                                 {"hresult", "0x80090019"},
                                 {"latency_ms", 12.5},
                                 {"request_id", 42}};
  auto f = AsMap(log::JournalFields(log::Level::kWarning, "rpc", fields));
  EXPECT_EQ(f["PRIORITY"], "4");
  EXPECT_EQ(f["SYSLOG_IDENTIFIER"], "keywardend");
  EXPECT_EQ(f["KEYWARDEN_METHOD"], "/keywarden.v1.Enrollment/Submit");
  EXPECT_EQ(f["KEYWARDEN_PRINCIPAL"], "CN=alice,O=corp");
  EXPECT_EQ(f["KEYWARDEN_STATUS"], "FAILED_PRECONDITION");
  EXPECT_EQ(f["KEYWARDEN_HRESULT"], "0x80090019");
  EXPECT_EQ(f["KEYWARDEN_LATENCY_MS"], "12.5");
  EXPECT_EQ(f["KEYWARDEN_REQUEST_ID"], "42");
  // MESSAGE: the text line, without the "keywardend: " prefix journald
  // shows anyway (SYSLOG_IDENTIFIER).
  EXPECT_EQ(f["MESSAGE"],
            "rpc hresult=0x80090019 latency_ms=12.5 method=/keywarden.v1.Enrollment/Submit "
            "principal=\"CN=alice,O=corp\" request_id=42 status=FAILED_PRECONDITION");
  EXPECT_EQ(f.size(), 9u);
}

TEST(JournalFieldsTest, PrioritiesFollowSyslog) {
  EXPECT_EQ(AsMap(log::JournalFields(log::Level::kError, "x", nullptr))["PRIORITY"], "3");
  EXPECT_EQ(AsMap(log::JournalFields(log::Level::kInfo, "x", nullptr))["PRIORITY"], "6");
  EXPECT_EQ(AsMap(log::JournalFields(log::Level::kDebug, "x", nullptr))["PRIORITY"], "7");
}

TEST(JournalFieldsTest, AClientChosenValueStaysInItsOwnFieldAndCannotAddFields) {
  // A principal with a newline and "PRIORITY=0": one field, as it is (the
  // native protocol carries the length); the message line escapes it.
  const std::string evil = "CN=x\nPRIORITY=0\nSYSLOG_IDENTIFIER=sshd";
  auto entry = log::JournalFields(log::Level::kInfo, "rpc", {{"principal", evil}});
  auto f = AsMap(entry);
  EXPECT_EQ(f["KEYWARDEN_PRINCIPAL"], evil);
  EXPECT_EQ(f["PRIORITY"], "6");
  EXPECT_EQ(f["SYSLOG_IDENTIFIER"], "keywardend");
  EXPECT_EQ(f["MESSAGE"].find('\n'), std::string::npos) << f["MESSAGE"];
  EXPECT_EQ(entry.size(), 4u);
  // Field names are upper-cased and reduced to A-Z, 0-9 and _.
  auto g = AsMap(log::JournalFields(log::Level::kInfo, "x", {{"kras.valid-now", 2}}));
  EXPECT_EQ(g["KEYWARDEN_KRAS_VALID_NOW"], "2");
}

TEST(JournalFieldsTest, JsonFormatPutsTheJsonObjectInMessage) {
  auto f = AsMap(log::JournalFields(log::Level::kInfo, "started", {{"listen", "127.0.0.1:1"}},
                                    R"({"msg":"started","listen":"127.0.0.1:1"})"));
  EXPECT_EQ(f["MESSAGE"], R"({"msg":"started","listen":"127.0.0.1:1"})");
  EXPECT_EQ(f["KEYWARDEN_LISTEN"], "127.0.0.1:1");
}

// JOURNAL_STREAM names stderr only when its dev:ino is stderr's file.
TEST(StderrIsJournalTest, MatchesOnlyTheDeviceAndInodeOfStderr) {
  TempDir tmp;
  const std::string path = tmp.File("stderr");
  const int saved = dup(2);
  ASSERT_GE(saved, 0);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(dup2(fd, 2), 2);
  close(fd);
  // stat(1)'s device and inode of the file, as systemd writes them.
  auto st = RunCommand("stat -c '%d:%i' " + path);
  std::string dev_ino = st.output.substr(0, st.output.find('\n'));
  const char* old = std::getenv("JOURNAL_STREAM");
  const std::string old_value = old != nullptr ? old : "";

  setenv("JOURNAL_STREAM", dev_ino.c_str(), 1);
  const bool same = log::StderrIsJournal();
  const std::string other_ino = dev_ino.substr(0, dev_ino.find(':') + 1) + "1";
  setenv("JOURNAL_STREAM", other_ino.c_str(), 1);
  const bool other = log::StderrIsJournal();
  setenv("JOURNAL_STREAM", "not a stream", 1);
  const bool garbage = log::StderrIsJournal();
  setenv("JOURNAL_STREAM", (dev_ino + "x").c_str(), 1);
  const bool trailing = log::StderrIsJournal();
  unsetenv("JOURNAL_STREAM");
  const bool unset = log::StderrIsJournal();

  dup2(saved, 2);
  close(saved);
  if (old != nullptr) setenv("JOURNAL_STREAM", old_value.c_str(), 1);
  ASSERT_EQ(st.exit_code, 0) << st.output;
  EXPECT_TRUE(same) << dev_ino;
  EXPECT_FALSE(other) << other_ino;
  EXPECT_FALSE(garbage);
  EXPECT_FALSE(trailing);
  EXPECT_FALSE(unset);
}

}  // namespace
}  // namespace keywarden::testing
