#include "softhsm-fixtures/fixture.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "hsm/strings.h"

#ifndef KEYWARDEN_FIXTURE_SCRIPT
#error "KEYWARDEN_FIXTURE_SCRIPT must name softhsm-fixtures/make-tokens.sh"
#endif
#ifndef KEYWARDEN_SOFTHSM_MODULE
#define KEYWARDEN_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

namespace keywarden::testing {

const std::vector<FixtureToken>& SoftHsmFixture::StandardTokens() {
  static const auto* tokens = new std::vector<FixtureToken>{
      {kCaToken, "ca-so-pin-1", "ca-user-pin-1"},
      {kKraCard1, "kra1-so-pin", "kra1-user-pin"},
      {kKraCard2, "kra2-so-pin", "kra2-user-pin"},
      {kKraCard3, "kra3-so-pin", "kra3-user-pin"},
  };
  return *tokens;
}

const std::vector<FixtureToken>& SoftHsmFixture::FiveKraCards() {
  static const auto* tokens = [] {
    auto* all = new std::vector<FixtureToken>(StandardTokens());
    all->push_back({kKraCard4, "kra4-so-pin", "kra4-user-pin"});
    all->push_back({kKraCard5, "kra5-so-pin", "kra5-user-pin"});
    return all;
  }();
  return *tokens;
}

std::string SoftHsmFixture::module_path() {
  const char* env = std::getenv("KEYWARDEN_PKCS11_MODULE");
  return env != nullptr && *env != '\0' ? env : KEYWARDEN_SOFTHSM_MODULE;
}

std::string SoftHsmFixture::TokenUri(const std::string& label) {
  return "pkcs11:token=" + label;
}

const FixtureToken& SoftHsmFixture::token(const std::string& label) const {
  for (const auto& t : tokens_) {
    if (t.label == label) return t;
  }
  throw std::out_of_range("no fixture token " + label);
}

absl::StatusOr<std::unique_ptr<SoftHsmFixture>> SoftHsmFixture::Create(
    const std::vector<FixtureToken>& tokens) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ =
      StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/keywarden-hsm-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(StrCat("fixture: cannot create ", templ));
  }
  std::vector<std::string> args = {KEYWARDEN_FIXTURE_SCRIPT, templ};
  for (const auto& t : tokens) args.push_back(StrCat(t.label, ":", t.so_pin, ":", t.user_pin));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fixture: fork failed");
  if (pid == 0) {
    // Quiet on success; errors still reach stderr.
    if (std::freopen("/dev/null", "w", stdout) == nullptr) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::filesystem::remove_all(templ);
    return absl::InternalError(StrCat("fixture: ", KEYWARDEN_FIXTURE_SCRIPT, " failed"));
  }
  setenv("SOFTHSM2_CONF", StrCat(templ, "/softhsm2.conf").c_str(), 1);
  return std::unique_ptr<SoftHsmFixture>(new SoftHsmFixture(templ, tokens));
}

SoftHsmFixture::~SoftHsmFixture() {
  const char* keep = std::getenv("KEYWARDEN_KEEP_FIXTURES");
  if (keep != nullptr && *keep != '\0' && std::string(keep) != "0") return;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace keywarden::testing
