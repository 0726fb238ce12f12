#include <openssl/crypto.h>

#include "hsm/strings.h"
#include "hsm/token.h"

#include <algorithm>
#include <cstdio>

#include "hsm/log_sink.h"
#include "hsm/status.h"

namespace keywarden::hsm {

namespace {

constexpr std::chrono::milliseconds kFirstBackoff{100};
constexpr std::chrono::milliseconds kMaxBackoff{5000};

// The one initialised token matching the URI, or an error listing what was found.
absl::StatusOr<SlotToken> FindSlot(const Module& module, const Pkcs11Uri& uri) {
  auto tokens = module.Tokens();
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
        StrCat("no token matches PKCS#11 URI \"", uri.Redacted(), "\" in module ", module.path(),
               "; tokens present: ", seen.empty() ? "none" : StrJoin(seen, ", ")));
  }
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" matches ", matches.size(),
               " tokens; add serial= to choose one of: ", StrJoin(seen, ", ")));
  }
  return std::move(matches[0]);
}

}  // namespace

Session::Session(Session&& other) noexcept
    : token_(std::move(other.token_)),
      handle_(other.handle_),
      broken_(other.broken_),
      rw_(other.rw_),
      generation_(other.generation_) {
  other.handle_ = CK_INVALID_HANDLE;
}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    Release();
    token_ = std::move(other.token_);
    handle_ = other.handle_;
    broken_ = other.broken_;
    rw_ = other.rw_;
    generation_ = other.generation_;
    other.handle_ = CK_INVALID_HANDLE;
  }
  return *this;
}

Session::~Session() {
  Release();
}

void Session::Release() {
  if (token_ && handle_ != CK_INVALID_HANDLE) token_->Return(handle_, rw_, generation_, broken_);
  handle_ = CK_INVALID_HANDLE;
  token_.reset();
}

absl::StatusOr<CK_OBJECT_HANDLE> KeyHandle::Resolve(Session& s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (generation_ == s.generation()) return handle_;
  // The module was re-initialised: the old handle means nothing (or another object).
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  std::vector<CK_ATTRIBUTE> match = {Attr(CKA_CLASS, cls)};
  if (!id_.empty()) match.push_back(Attr(CKA_ID, id_.data(), id_.size()));
  if (!label_.empty()) match.push_back(Attr(CKA_LABEL, label_.data(), label_.size()));
  const std::string what =
      StrCat("finding key \"", label_, "\" again on token \"", s.token().label(), "\"");
  CK_RV rv = s.Call("C_FindObjectsInit", s.fn()->C_FindObjectsInit, s.handle(), match.data(),
                    static_cast<CK_ULONG>(match.size()));
  if (rv != CKR_OK) return Pkcs11Error("C_FindObjectsInit", rv, what);
  CK_OBJECT_HANDLE found[2];
  CK_ULONG n = 0;
  rv = s.Call("C_FindObjects", s.fn()->C_FindObjects, s.handle(), found, CK_ULONG{2}, &n);
  CK_RV frv = s.Call("C_FindObjectsFinal", s.fn()->C_FindObjectsFinal, s.handle());
  if (rv != CKR_OK) return Pkcs11Error("C_FindObjects", rv, what);
  if (frv != CKR_OK) return Pkcs11Error("C_FindObjectsFinal", frv, what);
  // The token came back without the key (or with two): the CA's side, not the caller's.
  if (n != 1) return HsmUnavailable(StrCat(what, ": ", n, " private keys match, not 1"));
  handle_ = found[0];
  generation_ = s.generation();
  return handle_;
}

Token::Token(std::shared_ptr<Module> module, SlotToken info, Pkcs11Uri uri, Options options)
    : module_(std::move(module)),
      info_(std::move(info)),
      uri_(std::move(uri)),
      options_(options),
      generation_(module_->generation()) {}

absl::StatusOr<std::shared_ptr<Token>> Token::Open(std::shared_ptr<Module> module,
                                                   const Pkcs11Uri& uri, Options options) {
  if (!module) return absl::InvalidArgumentError("token: no PKCS#11 module");
  if (!uri.has_token_selector()) {
    return absl::InvalidArgumentError(
        StrCat("PKCS#11 URI \"", uri.Redacted(), "\" names no token (give token= or serial=)"));
  }
  auto slot = FindSlot(*module, uri);
  if (!slot.ok()) return slot.status();
  options.max_sessions = std::max<size_t>(options.max_sessions, 1);
  return std::shared_ptr<Token>(new Token(std::move(module), std::move(*slot), uri, options));
}

Token::~Token() {
  // Every lease holds a reference to the token, so all sessions are idle here.
  if (generation_ != module_->generation()) return;  // void since a re-initialisation
  for (auto* idle : {&idle_ro_, &idle_rw_}) {
    for (CK_SESSION_HANDLE h : *idle) module_->Call("C_CloseSession", fn()->C_CloseSession, h);
  }
}

void Token::SetPinSource(PinSource source) {
  std::lock_guard<std::mutex> lock(mu_);
  pin_source_ = std::move(source);
}

void Token::SetAvailabilityListener(std::function<void(bool, const std::string&)> l) {
  std::lock_guard<std::mutex> lock(mu_);
  listener_ = std::move(l);
}

void Token::Notify(bool up, const std::string& detail) {
  std::function<void(bool, const std::string&)> l;
  {
    std::lock_guard<std::mutex> lock(mu_);
    l = listener_;
  }
  if (l) l(up, detail);
}

absl::Status Token::LoginWith(Session& session, const SecretString& pin, CK_USER_TYPE user) {
  std::string pin_copy(pin.view());
  CK_RV rv = session.Call("C_Login", fn()->C_Login, session.handle(), user,
                          reinterpret_cast<CK_UTF8CHAR_PTR>(pin_copy.data()),
                          static_cast<CK_ULONG>(pin_copy.size()));
  OPENSSL_cleanse(pin_copy.data(), pin_copy.capacity());
  if (rv != CKR_OK && !(user == CKU_USER && rv == CKR_USER_ALREADY_LOGGED_IN)) {
    return Pkcs11Error("C_Login", rv,
                       StrCat(user == CKU_CONTEXT_SPECIFIC ? "context-specific login to token \""
                                                           : "log in to token \"",
                              label(), "\""));
  }
  return absl::OkStatus();
}

absl::Status Token::Login(const SecretString& pin) {
  std::lock_guard<std::mutex> lock(login_mu_);
  auto session = Acquire();
  if (!session.ok()) return session.status();
  CK_SESSION_INFO info{};
  // Logged in already (this application, any session): no second C_Login,
  // which SoftHSM2 answers by rewriting the token file.
  if (session->Call("C_GetSessionInfo", fn()->C_GetSessionInfo, session->handle(), &info) ==
          CKR_OK &&
      (info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS)) {
    std::lock_guard<std::mutex> state(mu_);
    login_wanted_ = true;
    return absl::OkStatus();
  }
  if (auto st = LoginWith(*session, pin, CKU_USER); !st.ok()) return st;
  std::lock_guard<std::mutex> state(mu_);
  login_wanted_ = true;
  return absl::OkStatus();
}

bool Token::logged_in() {
  auto session = Acquire();
  if (!session.ok()) return false;
  CK_SESSION_INFO info{};
  if (session->Call("C_GetSessionInfo", fn()->C_GetSessionInfo, session->handle(), &info) !=
      CKR_OK) {
    return false;
  }
  return info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS;
}

bool Token::available() const {
  std::lock_guard<std::mutex> lock(mu_);
  return up_ && generation_ == module_->generation();
}

void Token::NoteFault(const char* function, CK_RV rv, uint64_t session_generation) {
  if (rv == CKR_USER_NOT_LOGGED_IN) {
    // Only a fault when this process logged in (a card a tool has not
    // logged in to yet is not broken).
    std::lock_guard<std::mutex> lock(mu_);
    if (!login_wanted_) return;
  }
  ReportFault(Pkcs11Error(function, rv, StrCat("token \"", label(), "\"")), session_generation);
}

void Token::ReportFault(const absl::Status& why, uint64_t session_generation) {
  faults_.fetch_add(1);
  bool went_down = false;
  std::string reason(why.message());
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A session from before the module's last re-initialisation (by this
    // token or another of the module) says nothing about the token now; it
    // finds its slot again at the next Acquire.
    if (session_generation != module_->generation()) return;
    if (up_) {
      up_ = false;
      went_down = true;
      backoff_ = kFirstBackoff;
      next_attempt_ = std::chrono::steady_clock::now();  // the first retry is at once
    }
    down_reason_ = reason;
  }
  session_free_.notify_all();  // waiters in Acquire fail fast
  if (went_down) {
    Log(LogLevel::kError, StrCat("token \"", label(), "\" is unavailable"),
        {{"token", label()}, {"reason", reason}});
    Notify(false, reason);
  }
}

absl::Status Token::CheckAvailable() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (up_ && generation_ == module_->generation()) return absl::OkStatus();
    if (!up_ && std::chrono::steady_clock::now() < next_attempt_) {
      return HsmUnavailable(StrCat("token \"", label(), "\" is down (", down_reason_, ")"));
    }
  }
  return Recover();
}

absl::Status Token::Recover() {
  std::unique_lock<std::mutex> recovering(recover_mu_, std::try_to_lock);
  if (!recovering.owns_lock()) {
    // Another thread is at it: fail fast rather than queue behind it.
    std::lock_guard<std::mutex> lock(mu_);
    if (up_ && generation_ == module_->generation()) return absl::OkStatus();
    return HsmUnavailable(StrCat("token \"", label(), "\" is being recovered (",
                                 down_reason_.empty() ? "module re-initialised" : down_reason_,
                                 ")"));
  }
  bool reinitialize = false;
  bool was_down = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (up_ && generation_ == module_->generation()) return absl::OkStatus();
    was_down = !up_;
    // Down: only a re-initialisation helps (also after a failed attempt).
    // Up with an older generation: another token of this module
    // re-initialised it, and this one only finds its slot and logs in again.
    reinitialize = !up_;
  }
  auto fail = [&](const absl::Status& why) {
    std::string reason(why.message());
    bool went_down = false;
    std::chrono::milliseconds wait;
    {
      std::lock_guard<std::mutex> lock(mu_);
      went_down = up_;
      up_ = false;
      down_reason_ = reason;
      wait = backoff_;
      next_attempt_ = std::chrono::steady_clock::now() + backoff_;
      backoff_ = std::min(backoff_ * 2, kMaxBackoff);
    }
    if (went_down) Notify(false, reason);
    return HsmUnavailable(StrCat("token \"", label(), "\": recovery failed (", reason,
                                 "); next attempt in ", wait.count(), " ms"));
  };
  if (reinitialize) {
    if (auto st = module_->Reinitialize(); !st.ok()) return fail(st);
  }
  const uint64_t generation = module_->generation();
  std::optional<PinSource> pin_source;
  bool login_wanted = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Idle sessions died with the old generation (never closed: their
    // handle numbers may belong to new sessions now). Leased ones are
    // dropped when returned.
    open_ -= idle_ro_.size() + idle_rw_.size();
    idle_ro_.clear();
    idle_rw_.clear();
    pin_source = pin_source_;
    login_wanted = login_wanted_;
  }
  auto slot = FindSlot(*module_, uri_);
  if (!slot.ok()) return fail(slot.status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    info_.slot = slot->slot;
    generation_ = generation;
  }
  if (login_wanted) {
    if (!pin_source) return fail(absl::FailedPreconditionError("no PIN source to log in again"));
    auto pin = pin_source->Read();
    if (!pin.ok()) return fail(pin.status());
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = module_->Call("C_OpenSession", fn()->C_OpenSession, slot->slot,
                             static_cast<CK_FLAGS>(CKF_SERIAL_SESSION), nullptr, nullptr, &h);
    if (rv != CKR_OK) return fail(Pkcs11Error("C_OpenSession", rv));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++open_;
    }
    Session session(shared_from_this(), h, false, generation);
    std::string pin_copy(pin->view());
    rv = module_->Call("C_Login", fn()->C_Login, h, CKU_USER,
                       reinterpret_cast<CK_UTF8CHAR_PTR>(pin_copy.data()),
                       static_cast<CK_ULONG>(pin_copy.size()));
    OPENSSL_cleanse(pin_copy.data(), pin_copy.capacity());
    pin->Clear();
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
      session.MarkBroken();
      return fail(Pkcs11Error("C_Login", rv));
    }
    // `session` goes back to the pool and keeps the login in force.
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    up_ = true;
    down_reason_.clear();
    backoff_ = kFirstBackoff;
  }
  session_free_.notify_all();
  if (was_down) {
    const std::string detail =
        StrCat("token \"", label(), "\" is back: module re-initialised, token found in slot ",
               slot->slot, login_wanted ? ", logged in again" : "");
    Log(LogLevel::kInfo, StrCat("token \"", label(), "\" is back"),
        {{"token", label()}, {"detail", detail}});
    Notify(true, detail);
  }
  return absl::OkStatus();
}

Token::PoolStats Token::pool_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStats out;
  out.max_sessions = options_.max_sessions;
  out.open = open_;
  const size_t idle = idle_ro_.size() + idle_rw_.size();
  out.in_use = open_ > idle ? open_ - idle : 0;
  out.waits = waits_;
  out.wait_timeouts = wait_timeouts_;
  return out;
}

absl::StatusOr<Session> Token::Acquire(Access access) {
  if (auto st = CheckAvailable(); !st.ok()) return st;
  const bool rw = access == Access::kReadWrite;
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + options_.acquire_timeout;
  auto& idle = rw ? idle_rw_ : idle_ro_;
  auto& other = rw ? idle_ro_ : idle_rw_;
  const auto free = [&] {
    return !up_ || !idle.empty() || !other.empty() || open_ < options_.max_sessions;
  };
  if (!free()) ++waits_;
  if (!session_free_.wait_until(lock, deadline, free)) {
    ++wait_timeouts_;
    return absl::UnavailableError(StrCat("token \"", label(), "\": no session free within ",
                                         options_.acquire_timeout.count(), " ms (all ",
                                         options_.max_sessions, " in use)"));
  }
  if (!up_) return HsmUnavailable(StrCat("token \"", label(), "\" is down (", down_reason_, ")"));
  const uint64_t generation = generation_;
  if (!idle.empty()) {
    CK_SESSION_HANDLE h = idle.back();
    idle.pop_back();
    return Session(shared_from_this(), h, rw, generation);
  }
  CK_SESSION_HANDLE spare = CK_INVALID_HANDLE;
  if (open_ >= options_.max_sessions) {
    // Only sessions of the other kind are idle: close one for a new one.
    // Another session stays open when there is one, so the login holds.
    spare = other.back();
    other.pop_back();
  } else {
    ++open_;
  }
  const CK_SLOT_ID slot = info_.slot;
  lock.unlock();
  if (spare != CK_INVALID_HANDLE) module_->Call("C_CloseSession", fn()->C_CloseSession, spare);
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
  CK_RV rv = module_->Call("C_OpenSession", fn()->C_OpenSession, slot, flags, nullptr, nullptr, &h);
  if (rv != CKR_OK) {
    lock.lock();
    --open_;
    session_free_.notify_one();
    lock.unlock();
    absl::Status st = Pkcs11Error("C_OpenSession", rv, StrCat("token \"", label(), "\""));
    if (IsTokenFault(rv)) ReportFault(st, generation);
    return st;
  }
  return Session(shared_from_this(), h, rw, generation);
}

void Token::Return(CK_SESSION_HANDLE handle, bool rw, uint64_t generation, bool broken) {
  std::unique_lock<std::mutex> lock(mu_);
  if (generation != generation_) {
    // Void since a re-initialisation; its number may be a new session's.
    --open_;
    session_free_.notify_one();
    return;
  }
  if (broken) {
    --open_;
    lock.unlock();
    module_->Call("C_CloseSession", fn()->C_CloseSession, handle);
    session_free_.notify_one();
    return;
  }
  (rw ? idle_rw_ : idle_ro_).push_back(handle);
  session_free_.notify_one();
}

size_t Token::open_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_;
}

absl::Status Token::ContextLogin(Session& session) {
  std::optional<PinSource> source;
  {
    std::lock_guard<std::mutex> lock(mu_);
    source = pin_source_;
  }
  if (!source) {
    return absl::FailedPreconditionError(
        StrCat("token \"", label(),
               "\": the key needs a context-specific login (CKA_ALWAYS_AUTHENTICATE) and no PIN "
               "source is configured"));
  }
  auto pin = source->Read();
  if (!pin.ok()) return pin.status();
  absl::Status st = LoginWith(session, *pin, CKU_CONTEXT_SPECIFIC);
  pin->Clear();
  return st;
}

absl::StatusOr<std::vector<uint8_t>> Token::Sign(KeyHandle& key, CK_MECHANISM mechanism,
                                                 std::span<const uint8_t> data, size_t max_out) {
  auto session = Acquire();
  if (!session.ok()) return session.status();
  auto handle = key.Resolve(*session);
  if (!handle.ok()) return handle.status();
  const std::string what = StrCat("sign on token \"", label(), "\"");
  CK_RV rv = session->Call("C_SignInit", fn()->C_SignInit, session->handle(), &mechanism, *handle);
  if (rv != CKR_OK) return Pkcs11Error("C_SignInit", rv, what);
  if (key.always_authenticate()) {
    if (auto st = ContextLogin(*session); !st.ok()) {
      session->MarkBroken();  // an operation is left initialised
      return st;
    }
  }
  std::vector<uint8_t> out(max_out);
  CK_ULONG len = static_cast<CK_ULONG>(out.size());
  rv =
      session->Call("C_Sign", fn()->C_Sign, session->handle(), const_cast<CK_BYTE_PTR>(data.data()),
                    static_cast<CK_ULONG>(data.size()), out.data(), &len);
  if (rv != CKR_OK) {
    // A failed C_Sign ends the operation, except CKR_BUFFER_TOO_SMALL, which
    // cannot happen with max_out sized from the key.
    if (rv == CKR_BUFFER_TOO_SMALL) session->MarkBroken();
    return Pkcs11Error("C_Sign", rv, what);
  }
  out.resize(len);
  return out;
}

absl::StatusOr<SecretBytes> Token::Decrypt(KeyHandle& key, CK_MECHANISM mechanism,
                                           std::span<const uint8_t> data, size_t max_out) {
  auto session = Acquire();
  if (!session.ok()) return session.status();
  auto handle = key.Resolve(*session);
  if (!handle.ok()) return handle.status();
  const std::string what = StrCat("decrypt on token \"", label(), "\"");
  CK_RV rv =
      session->Call("C_DecryptInit", fn()->C_DecryptInit, session->handle(), &mechanism, *handle);
  if (rv != CKR_OK) {
    if (IsMechanismRefusal(rv)) {
      // What the token cannot do (the caller may only see OpenSSL's error).
      absl::Status refused =
          MechanismRefused(label(), MechanismName(mechanism), "C_DecryptInit", rv);
      NoteMechanismRefusal(refused);
      return refused;
    }
    return Pkcs11Error("C_DecryptInit", rv, what);
  }
  if (key.always_authenticate()) {
    if (auto st = ContextLogin(*session); !st.ok()) {
      session->MarkBroken();
      return st;
    }
  }
  SecretBytes out(max_out);
  CK_ULONG len = static_cast<CK_ULONG>(out.size());
  rv = session->Call("C_Decrypt", fn()->C_Decrypt, session->handle(),
                     const_cast<CK_BYTE_PTR>(data.data()), static_cast<CK_ULONG>(data.size()),
                     out.data(), &len);
  if (rv != CKR_OK) {
    if (rv == CKR_BUFFER_TOO_SMALL) session->MarkBroken();
    return Pkcs11Error("C_Decrypt", rv, what);
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
