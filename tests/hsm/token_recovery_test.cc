// Token faults on a real SoftHSM2 token: its directory is taken away and
// brought back; the pool's deadline, read-only sessions and the login state
// asked of the token.
#include <chrono>
#include <cstdio>
#include <thread>

#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

using hsm::KeyAlgorithm;

class TokenRecoveryTest : public TokenTest {
 protected:
  bool SignsAndVerifies(EVP_PKEY* pkey, EVP_PKEY* pub, std::string* why) {
    const std::string msg = "recovery";
    auto* m = reinterpret_cast<const unsigned char*>(msg.data());
    ossl::UniquePtr<EVP_MD_CTX> sctx(EVP_MD_CTX_new());
    size_t len = 512;
    std::vector<uint8_t> sig(len);
    if (EVP_DigestSignInit_ex(sctx.get(), nullptr, "SHA256", crypto_->libctx(), nullptr, pkey,
                              nullptr) != 1 ||
        EVP_DigestSign(sctx.get(), sig.data(), &len, m, msg.size()) != 1) {
      *why = std::string(hsm::OpenSslError("sign").message());
      return false;
    }
    ossl::UniquePtr<EVP_MD_CTX> vctx(EVP_MD_CTX_new());
    return EVP_DigestVerifyInit_ex(vctx.get(), nullptr, "SHA256", nullptr, nullptr, pub, nullptr) ==
               1 &&
           EVP_DigestVerify(vctx.get(), sig.data(), len, m, msg.size()) == 1;
  }
  std::string TokenDir() const { return fixture_->dir() + "/tokens"; }
};

TEST_F(TokenRecoveryTest, TokenTakenAwayIsAFaultAndTheSameKeyWorksAfterRecovery) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "survivor");
  ASSERT_NE(key, nullptr);
  auto pkey = Load(key);
  std::string why;
  ASSERT_TRUE(SignsAndVerifies(pkey.get(), key->public_key.get(), &why)) << why;
  std::vector<std::pair<bool, std::string>> events;
  ca_->SetAvailabilityListener(
      [&](bool up, const std::string& detail) { events.emplace_back(up, detail); });

  const std::string away = TokenDir() + ".away";
  ASSERT_EQ(std::rename(TokenDir().c_str(), away.c_str()), 0);
  const uint64_t faults = ca_->faults();
  EXPECT_FALSE(SignsAndVerifies(pkey.get(), key->public_key.get(), &why));
  EXPECT_NE(why.find("HSM unavailable"), std::string::npos) << why;
  EXPECT_GT(ca_->faults(), faults);
  EXPECT_FALSE(ca_->available());
  // Down: a direct call is a typed token fault, never the caller's input.
  auto random = ca_->GenerateRandom(16);
  ASSERT_FALSE(random.ok());
  EXPECT_EQ(random.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(hsm::IsHsmFault(random.status())) << random.status();
  EXPECT_NE(random.status().message().find("HSM unavailable"), absl::string_view::npos);

  ASSERT_EQ(std::rename(away.c_str(), TokenDir().c_str()), 0);
  absl::Status back = absl::UnknownError("not tried");
  for (int i = 0; i < 100 && !back.ok(); ++i) {
    back = ca_->CheckAvailable();
    if (!back.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(back.ok()) << back;
  EXPECT_TRUE(ca_->available());
  EXPECT_TRUE(ca_->logged_in());
  // The EVP_PKEY made before the outage: its handle is found again.
  EXPECT_TRUE(SignsAndVerifies(pkey.get(), key->public_key.get(), &why)) << why;
  ASSERT_GE(events.size(), 2u);
  EXPECT_FALSE(events.front().first);
  EXPECT_NE(events.front().second.find("CKR_"), std::string::npos) << events.front().second;
  EXPECT_TRUE(events.back().first);
  std::fprintf(stderr, "down: %s\nup: %s\n", events.front().second.c_str(),
               events.back().second.c_str());
}

TEST_F(TokenRecoveryTest, AcquireGivesUpAtItsDeadline) {
  ca_.reset();
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::File(fixture_->PinFile(SoftHsmFixture::kCaToken));
  options.token.max_sessions = 1;
  options.token.acquire_timeout = std::chrono::milliseconds(300);
  auto token = hsm::OpenToken(*uri, options);
  ASSERT_TRUE(token.ok()) << token.status();
  auto held = (*token)->Acquire();
  ASSERT_TRUE(held.ok());
  const auto start = std::chrono::steady_clock::now();
  auto second = (*token)->Acquire();
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find("no session free"), absl::string_view::npos)
      << second.status();
  EXPECT_GE(took, std::chrono::milliseconds(250));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST_F(TokenRecoveryTest, SessionsAreReadOnlyUnlessAnObjectIsCreated) {
  auto s = ca_->Acquire();
  ASSERT_TRUE(s.ok());
  CK_SESSION_INFO info{};
  ASSERT_EQ(s->Call("C_GetSessionInfo", s->fn()->C_GetSessionInfo, s->handle(), &info), CKR_OK);
  EXPECT_EQ(info.flags & CKF_RW_SESSION, 0u);
  EXPECT_EQ(info.state, static_cast<CK_STATE>(CKS_RO_USER_FUNCTIONS));
  auto rw = ca_->Acquire(hsm::Access::kReadWrite);
  ASSERT_TRUE(rw.ok());
  ASSERT_EQ(rw->Call("C_GetSessionInfo", rw->fn()->C_GetSessionInfo, rw->handle(), &info), CKR_OK);
  EXPECT_NE(info.flags & CKF_RW_SESSION, 0u);
}

TEST_F(TokenRecoveryTest, LoginStateIsAskedOfTheToken) {
  EXPECT_TRUE(ca_->logged_in());
  {
    // Another part of the process logs out (C_Logout ends the login for
    // every session): the token's answer changes, not a cached flag.
    auto s = ca_->Acquire();
    ASSERT_TRUE(s.ok());
    ASSERT_EQ(s->Call("C_Logout", s->fn()->C_Logout, s->handle()), CKR_OK);
  }
  EXPECT_FALSE(ca_->logged_in());
  auto pin = hsm::PinSource::File(fixture_->PinFile(SoftHsmFixture::kCaToken)).Read();
  ASSERT_TRUE(pin.ok());
  ASSERT_TRUE(ca_->Login(*pin).ok());
  EXPECT_TRUE(ca_->logged_in());
}

TEST_F(TokenRecoveryTest, AlwaysAuthenticateKeyGetsItsContextLoginBeforeEachSignature) {
  // Made by pkcs11-tool (independent) with CKA_ALWAYS_AUTHENTICATE.
  auto made =
      RunCommand("pkcs11-tool --module " + SoftHsmFixture::module_path() +
                 " --token-label keywarden-ca --login --pin ca-user-pin-1 --keypairgen "
                 "--key-type rsa:2048 --label always-auth --id 0a0a --always-auth --usage-sign");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto key = hsm::FindPrivateKey(ca_, "always-auth");
  ASSERT_TRUE(key.ok()) << key.status();
  ASSERT_TRUE((*key)->handle->always_authenticate());
  auto pkey = Load(*key);
  FILE* trace = std::tmpfile();
  ca_->module().SetTrace(true, trace);
  std::string why;
  const bool first = SignsAndVerifies(pkey.get(), (*key)->public_key.get(), &why);
  const bool second = SignsAndVerifies(pkey.get(), (*key)->public_key.get(), &why);
  ca_->module().SetTrace(false);
  std::fflush(trace);
  std::rewind(trace);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, trace) != nullptr) text += buf;
  std::fclose(trace);
  EXPECT_TRUE(first) << why;
  EXPECT_TRUE(second) << why;
  // C_SignInit, C_Login (context-specific), C_Sign: twice.
  size_t logins = 0;
  for (size_t at = 0; (at = text.find("C_SignInit = CKR_OK", at)) != std::string::npos; ++at) {
    const size_t login = text.find("C_Login = CKR_OK", at);
    const size_t sign = text.find("C_Sign = CKR_OK", at);
    if (login != std::string::npos && sign != std::string::npos && login < sign) ++logins;
  }
  EXPECT_EQ(logins, 2u) << text;
  EXPECT_EQ(text.find("ca-user-pin-1"), std::string::npos);
}

}  // namespace
}  // namespace keywarden::testing
