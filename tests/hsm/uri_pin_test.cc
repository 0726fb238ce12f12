// PKCS#11 URIs and PIN sources: pure parsing, no token needed.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include <gtest/gtest.h>

#include "hsm/pin.h"
#include "hsm/uri.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

using hsm::PinSource;
using hsm::Pkcs11Uri;

TEST(Pkcs11UriTest, ParsesTokenObjectIdTypeAndModule) {
  auto uri = Pkcs11Uri::Parse(
      "pkcs11:token=keywarden-ca;serial=abc123;object=ca%20key;id=%01%02;type=private"
      "?module-name=softhsm2&pin-source=file:/run/ca.pin");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->token_label(), "keywarden-ca");
  EXPECT_EQ(uri->token_serial(), "abc123");
  EXPECT_EQ(uri->object_label(), "ca key");
  EXPECT_EQ(uri->object_id(), (std::vector<uint8_t>{1, 2}));
  ASSERT_TRUE(uri->object_class().has_value());
  EXPECT_EQ(*uri->object_class(), static_cast<CK_OBJECT_CLASS>(CKO_PRIVATE_KEY));
  EXPECT_EQ(uri->module_name(), "softhsm2");
  EXPECT_EQ(uri->pin_source(), "file:/run/ca.pin");
}

TEST(Pkcs11UriTest, PinValueIsKeptButRedactedEverywhereShown) {
  auto uri = Pkcs11Uri::Parse("pkcs11:token=t;object=k?pin-value=s3cret&module-path=/x.so");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_TRUE(uri->has_pin_value());
  EXPECT_EQ(uri->pin_value().view(), "s3cret");
  EXPECT_EQ(uri->Redacted().find("s3cret"), std::string::npos);
  EXPECT_NE(uri->Redacted().find("pin-value=REDACTED"), std::string::npos);
  EXPECT_EQ(uri->module_path(), "/x.so");
}

TEST(Pkcs11UriTest, MalformedUrisAreClearErrors) {
  for (const char* bad : {"", "token=x", "pkcs11:token=%zz", "pkcs11:type=nonsense",
                          "http://example/pkcs11:token=x"}) {
    auto uri = Pkcs11Uri::Parse(bad);
    EXPECT_FALSE(uri.ok()) << bad;
    EXPECT_EQ(uri.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(uri.status().message().find("PKCS#11 URI"), absl::string_view::npos) << uri.status();
  }
}

TEST(Pkcs11UriTest, MalformedUriErrorNeverShowsThePin) {
  auto uri = Pkcs11Uri::Parse("pkcs11:token=%zz?pin-value=topsecret");
  ASSERT_FALSE(uri.ok());
  EXPECT_EQ(uri.status().message().find("topsecret"), absl::string_view::npos) << uri.status();
}

TEST(PinSourceTest, ReadsAFileWithoutItsNewline) {
  TempDir dir;
  WriteFile(dir.File("pin"), std::string("1234\n"));
  auto source = PinSource::Parse("file:" + dir.File("pin"));
  ASSERT_TRUE(source.ok());
  auto pin = source->Read();
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->view(), "1234");
  EXPECT_EQ(source->Describe(), "file " + dir.File("pin"));
}

TEST(PinSourceTest, ReadsAnEnvironmentVariable) {
  setenv("KW_TEST_PIN", "987654", 1);
  auto source = PinSource::Parse("env:KW_TEST_PIN");
  ASSERT_TRUE(source.ok());
  auto pin = source->Read();
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pin->view(), "987654");
  unsetenv("KW_TEST_PIN");
  EXPECT_EQ(source->Read().status().code(), absl::StatusCode::kNotFound);
}

TEST(PinSourceTest, MissingFileEmptyPinAndBadSpecAreClearErrors) {
  auto missing = PinSource::File("/nonexistent/pin").Read();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/pin"), absl::string_view::npos);
  TempDir dir;
  WriteFile(dir.File("empty"), std::string("\n"));
  EXPECT_EQ(PinSource::File(dir.File("empty")).Read().status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(PinSource::Parse("1234").ok());
  EXPECT_FALSE(PinSource::Parse("env:").ok());
}

TEST(PinSourceTest, PromptWithoutATerminalSaysHowElseToGiveThePin) {
  // In a child with its own session there is no controlling terminal, as
  // for a daemon or a CI job: the prompt must fail at once, not hang.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    setsid();
    auto read = PinSource::Prompt("PIN: ").Read();
    std::string msg = read.ok() ? "READ A PIN" : std::string(read.status().message());
    (void)!write(fds[1], msg.data(), msg.size());
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_NE(msg.find("no terminal"), std::string::npos) << msg;
  EXPECT_NE(msg.find("file or an environment variable"), std::string::npos) << msg;
}

TEST(SecretTest, SecretBytesTruncateAndMoveLeaveNothingBehind) {
  hsm::SecretBytes a(std::vector<uint8_t>{1, 2, 3, 4});
  a.Truncate(2);
  EXPECT_EQ(a.size(), 2u);
  hsm::SecretBytes b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_EQ(b.size(), 2u);
  hsm::SecretString s("pin");
  hsm::SecretString t(std::move(s));
  EXPECT_TRUE(s.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(t.view(), "pin");
}

}  // namespace
}  // namespace keywarden::testing
