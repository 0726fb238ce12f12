#include <openssl/crypto.h>

#include "hsm/strings.h"
#include "hsm/token.h"

#include <algorithm>

#include "hsm/status.h"

namespace keywarden::hsm {

Session::Session(Session&& other) noexcept
    : token_(std::move(other.token_)), handle_(other.handle_), broken_(other.broken_) {
  other.handle_ = CK_INVALID_HANDLE;
}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    Release();
    token_ = std::move(other.token_);
    handle_ = other.handle_;
    broken_ = other.broken_;
    other.handle_ = CK_INVALID_HANDLE;
  }
  return *this;
}

Session::~Session() {
  Release();
}

void Session::Release() {
  if (token_ && handle_ != CK_INVALID_HANDLE) token_->Return(handle_, broken_);
  handle_ = CK_INVALID_HANDLE;
  token_.reset();
}

absl::StatusOr<std::shared_ptr<Token>> Token::Open(std::shared_ptr<Module> module,
                                                   const Pkcs11Uri& uri, Options options) {
  if (!module) return absl::InvalidArgumentError("token: no PKCS#11 module");
  if (!uri.has_token_selector()) {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" names no token (give token= or serial=)"));
  }
  auto tokens = module->Tokens();
  if (!tokens.ok()) return tokens.status();
  std::vector<SlotToken> matches;
  std::vector<std::string> seen;
  for (auto& t : *tokens) {
    if (!t.initialized) continue;  // SoftHSM2's free slot, a blank card
    seen.push_back(StrCat("\"", t.label, "\" (serial ", t.serial, ")"));
    if (uri.MatchesToken(t)) matches.push_back(t);
  }
  if (matches.empty()) {
    return absl::NotFoundError(
        StrCat("no token matches PKCS#11 URI \"", uri.Redacted(), "\" in module ", module->path(),
               "; tokens present: ", seen.empty() ? "none" : StrJoin(seen, ", ")));
  }
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" matches ", matches.size(),
               " tokens; add serial= to choose one of: ", StrJoin(seen, ", ")));
  }
  options.max_sessions = std::max<size_t>(options.max_sessions, 1);
  return std::shared_ptr<Token>(new Token(std::move(module), std::move(matches[0]), options));
}

Token::~Token() {
  // Every lease holds a reference to the token, so all sessions are idle here.
  for (CK_SESSION_HANDLE h : idle_) module_->Call("C_CloseSession", fn()->C_CloseSession, h);
}

absl::Status Token::Login(const SecretString& pin) {
  std::lock_guard<std::mutex> lock(login_mu_);
  if (logged_in()) return absl::OkStatus();
  auto session = Acquire();
  if (!session.ok()) return session.status();
  std::string pin_copy(pin.view());
  CK_RV rv = session->Call("C_Login", fn()->C_Login, session->handle(), CKU_USER,
                           reinterpret_cast<CK_UTF8CHAR_PTR>(pin_copy.data()),
                           static_cast<CK_ULONG>(pin_copy.size()));
  OPENSSL_cleanse(pin_copy.data(), pin_copy.capacity());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    return Pkcs11Error("C_Login", rv, StrCat("log in to token \"", label(), "\""));
  }
  std::lock_guard<std::mutex> state(mu_);
  logged_in_ = true;
  return absl::OkStatus();
}

bool Token::logged_in() const {
  std::lock_guard<std::mutex> lock(mu_);
  return logged_in_;
}

absl::StatusOr<Session> Token::Acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  available_.wait(lock, [&] { return !idle_.empty() || open_ < options_.max_sessions; });
  if (!idle_.empty()) {
    CK_SESSION_HANDLE h = idle_.back();
    idle_.pop_back();
    return Session(shared_from_this(), h);
  }
  ++open_;
  lock.unlock();
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = module_->Call("C_OpenSession", fn()->C_OpenSession, info_.slot,
                           static_cast<CK_FLAGS>(CKF_SERIAL_SESSION | CKF_RW_SESSION), nullptr,
                           nullptr, &h);
  if (rv != CKR_OK) {
    lock.lock();
    --open_;
    available_.notify_one();
    return Pkcs11Error("C_OpenSession", rv, StrCat("token \"", label(), "\""));
  }
  return Session(shared_from_this(), h);
}

void Token::Return(CK_SESSION_HANDLE handle, bool broken) {
  if (broken) {
    module_->Call("C_CloseSession", fn()->C_CloseSession, handle);
    std::lock_guard<std::mutex> lock(mu_);
    --open_;
    available_.notify_one();
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(handle);
  available_.notify_one();
}

size_t Token::open_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_;
}

namespace {
bool SessionLost(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_DEVICE_REMOVED ||
         rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR;
}
}  // namespace

absl::StatusOr<std::vector<uint8_t>> Token::Sign(CK_OBJECT_HANDLE key, CK_MECHANISM mechanism,
                                                 std::span<const uint8_t> data, size_t max_out) {
  auto session = Acquire();
  if (!session.ok()) return session.status();
  CK_RV rv = session->Call("C_SignInit", fn()->C_SignInit, session->handle(), &mechanism, key);
  if (rv != CKR_OK) {
    if (SessionLost(rv)) session->MarkBroken();
    return Pkcs11Error("C_SignInit", rv, StrCat("sign on token \"", label(), "\""));
  }
  std::vector<uint8_t> out(max_out);
  CK_ULONG len = static_cast<CK_ULONG>(out.size());
  rv =
      session->Call("C_Sign", fn()->C_Sign, session->handle(), const_cast<CK_BYTE_PTR>(data.data()),
                    static_cast<CK_ULONG>(data.size()), out.data(), &len);
  if (rv != CKR_OK) {
    // A failed C_Sign ends the operation, except CKR_BUFFER_TOO_SMALL, which
    // cannot happen with max_out sized from the key.
    if (SessionLost(rv) || rv == CKR_BUFFER_TOO_SMALL) session->MarkBroken();
    return Pkcs11Error("C_Sign", rv, StrCat("sign on token \"", label(), "\""));
  }
  out.resize(len);
  return out;
}

absl::StatusOr<SecretBytes> Token::Decrypt(CK_OBJECT_HANDLE key, CK_MECHANISM mechanism,
                                           std::span<const uint8_t> data, size_t max_out) {
  auto session = Acquire();
  if (!session.ok()) return session.status();
  CK_RV rv =
      session->Call("C_DecryptInit", fn()->C_DecryptInit, session->handle(), &mechanism, key);
  if (rv != CKR_OK) {
    if (SessionLost(rv)) session->MarkBroken();
    return Pkcs11Error("C_DecryptInit", rv, StrCat("decrypt on token \"", label(), "\""));
  }
  SecretBytes out(max_out);
  CK_ULONG len = static_cast<CK_ULONG>(out.size());
  rv = session->Call("C_Decrypt", fn()->C_Decrypt, session->handle(),
                     const_cast<CK_BYTE_PTR>(data.data()), static_cast<CK_ULONG>(data.size()),
                     out.data(), &len);
  if (rv != CKR_OK) {
    if (SessionLost(rv) || rv == CKR_BUFFER_TOO_SMALL) session->MarkBroken();
    return Pkcs11Error("C_Decrypt", rv, StrCat("decrypt on token \"", label(), "\""));
  }
  out.Truncate(len);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> Token::GenerateRandom(size_t n) {
  auto session = Acquire();
  if (!session.ok()) return session.status();
  std::vector<uint8_t> out(n);
  CK_RV rv = session->Call("C_GenerateRandom", fn()->C_GenerateRandom, session->handle(),
                           out.data(), static_cast<CK_ULONG>(n));
  if (rv != CKR_OK) return Pkcs11Error("C_GenerateRandom", rv, StrCat("token \"", label(), "\""));
  return out;
}

}  // namespace keywarden::hsm
