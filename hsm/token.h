// A token (HSM partition or smart card) found by URI, with a bounded pool of
// sessions. A session is used by one thread at a time; the pool opens
// sessions on demand up to `max_sessions`, reuses them, and keeps them open
// so the login (which PKCS#11 shares across all sessions of an application)
// stays in force. No lock is held while a token call runs.
//
// Token faults (hsm/status.h IsTokenFault: device error or removal, a lost
// session or login, a key handle the token no longer knows) are the CA's
// side, never the caller's data: the call fails UNAVAILABLE "HSM
// unavailable: ..." (IsHsmFault) and the token is marked down. While down,
// Acquire fails fast (a circuit breaker) until the next recovery attempt is
// due; recovery re-initialises the module (C_Finalize + C_Initialize, the
// only way SoftHSM2 forgets a broken token), finds the token again by its
// URI and logs in again (PIN read again from its source), with a backoff
// doubling from 100 ms to 5 s between attempts. Key handles (KeyHandle) are
// found again after a re-initialisation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/pkcs11.h"
#include "hsm/secret.h"
#include "hsm/status.h"
#include "hsm/uri.h"

namespace keywarden::hsm {

class Token;

// A leased session: returned to the pool when destroyed.
class Session {
 public:
  Session(Session&& other) noexcept;
  Session& operator=(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  CK_SESSION_HANDLE handle() const { return handle_; }
  Token& token() const { return *token_; }
  CK_FUNCTION_LIST* fn() const;

  // Calls one PKCS#11 function on this session. A token fault marks the
  // session broken and the token down (see Token).
  template <typename F, typename... Args>
  CK_RV Call(const char* name, F f, Args... args) const;

  // The session hit an error that may have left it unusable (device removed,
  // session closed): it is closed instead of returned to the pool.
  void MarkBroken() { broken_ = true; }
  bool read_write() const { return rw_; }
  // The module generation the session was opened in.
  uint64_t generation() const { return generation_; }

 private:
  friend class Token;
  Session(std::shared_ptr<Token> token, CK_SESSION_HANDLE handle, bool rw, uint64_t generation)
      : token_(std::move(token)), handle_(handle), rw_(rw), generation_(generation) {}
  void Release();

  std::shared_ptr<Token> token_;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
  mutable bool broken_ = false;
  bool rw_ = false;
  uint64_t generation_ = 0;
};

// A private key's object handle. Handles die with a module
// re-initialisation: the key is then found again by class, CKA_ID and
// CKA_LABEL. A key with CKA_ALWAYS_AUTHENTICATE gets a context-specific
// login before each operation.
class KeyHandle {
 public:
  KeyHandle(CK_OBJECT_HANDLE handle, uint64_t generation, std::string label,
            std::vector<uint8_t> id, bool always_authenticate)
      : handle_(handle),
        generation_(generation),
        label_(std::move(label)),
        id_(std::move(id)),
        always_authenticate_(always_authenticate) {}
  // The handle valid in `session`'s generation.
  absl::StatusOr<CK_OBJECT_HANDLE> Resolve(Session& session);
  bool always_authenticate() const { return always_authenticate_; }

 private:
  std::mutex mu_;
  CK_OBJECT_HANDLE handle_;
  uint64_t generation_;
  const std::string label_;
  const std::vector<uint8_t> id_;
  const bool always_authenticate_;
};

enum class Access { kReadOnly, kReadWrite };

class Token : public std::enable_shared_from_this<Token> {
 public:
  struct Options {
    size_t max_sessions = 32;
    // How long Acquire waits for a free session before failing UNAVAILABLE.
    std::chrono::milliseconds acquire_timeout{30000};
  };

  // The one token matching the URI's token attributes (label, serial,
  // manufacturer, model). Slot numbers are never used: SoftHSM2 and real
  // HSMs renumber slots. No match or several matches is an error that lists
  // what was found.
  static absl::StatusOr<std::shared_ptr<Token>> Open(std::shared_ptr<Module> module,
                                                     const Pkcs11Uri& uri, Options options);
  static absl::StatusOr<std::shared_ptr<Token>> Open(std::shared_ptr<Module> module,
                                                     const Pkcs11Uri& uri) {
    return Open(std::move(module), uri, Options());
  }
  ~Token();

  // Logs in as the normal user unless the token says this application is
  // logged in already. A wrong PIN is reported and not retried, so a card's
  // retry counter is spent at most once per call.
  absl::Status Login(const SecretString& pin);
  // Where the PIN is read from again: to log in again after recovery and
  // for context-specific logins (CKA_ALWAYS_AUTHENTICATE). The PIN itself is
  // never kept.
  void SetPinSource(PinSource source);
  // Asked of the token (C_GetSessionInfo), not remembered.
  bool logged_in();

  // Waits while max_sessions sessions are in use, at most
  // Options::acquire_timeout (then UNAVAILABLE). Fails fast with
  // UNAVAILABLE "HSM unavailable: ..." while the token is down and no
  // recovery attempt is due. Read-only sessions unless an object is created
  // on the token. Never call a method that acquires (Sign, Decrypt,
  // GenerateRandom, FindPrivateKey, ...) while holding a Session from the
  // same token: with every session leased, two threads doing that wait for
  // each other until the deadline.
  absl::StatusOr<Session> Acquire(Access access = Access::kReadOnly);

  // Token health. available() is false from a token fault until recovery.
  bool available() const;
  // Counts token faults seen (for callers that must tell a token fault
  // from bad input after an OpenSSL call that hides the cause).
  uint64_t faults() const { return faults_.load(); }
  // Tries to recover now when down (and a retry is due); OK when available.
  absl::Status CheckAvailable();
  // Called (outside any token lock) when the token goes down (false, why)
  // and when it is back (true, what was done). One listener.
  void SetAvailabilityListener(std::function<void(bool available, const std::string& detail)> l);
  // A token fault seen by a caller outside a session call.
  void ReportFault(const absl::Status& why, uint64_t session_generation);

  const std::string& label() const { return info_.label; }
  const std::string& serial() const { return info_.serial; }
  const SlotToken& info() const { return info_; }
  Module& module() const { return *module_; }
  CK_FUNCTION_LIST* fn() const { return module_->functions(); }

  // Token-side primitives used by the key and provider layers.
  absl::StatusOr<std::vector<uint8_t>> Sign(KeyHandle& key, CK_MECHANISM mechanism,
                                            std::span<const uint8_t> data, size_t max_out);
  absl::StatusOr<SecretBytes> Decrypt(KeyHandle& key, CK_MECHANISM mechanism,
                                      std::span<const uint8_t> data, size_t max_out);
  absl::StatusOr<std::vector<uint8_t>> GenerateRandom(size_t n);

  // Sessions currently open (idle + leased); for tests and metrics.
  size_t open_sessions() const;
  // The session pool, for metrics: its limit, sessions open and leased,
  // Acquire calls that had to wait for a free session and those that gave
  // up (acquire_timeout).
  struct PoolStats {
    size_t max_sessions = 0;
    size_t open = 0;
    size_t in_use = 0;
    uint64_t waits = 0;
    uint64_t wait_timeouts = 0;
  };
  PoolStats pool_stats() const;

 private:
  friend class Session;
  Token(std::shared_ptr<Module> module, SlotToken info, Pkcs11Uri uri, Options options);
  void Return(CK_SESSION_HANDLE handle, bool rw, uint64_t generation, bool broken);
  void NoteFault(const char* function, CK_RV rv, uint64_t session_generation);
  absl::Status Recover();
  absl::Status LoginWith(Session& session, const SecretString& pin, CK_USER_TYPE user);
  absl::Status ContextLogin(Session& session);
  void Notify(bool up, const std::string& detail);

  std::shared_ptr<Module> module_;
  SlotToken info_;  // slot: guarded by mu_ (it changes at recovery)
  const Pkcs11Uri uri_;
  Options options_;

  mutable std::mutex mu_;
  std::condition_variable session_free_;
  std::vector<CK_SESSION_HANDLE> idle_ro_, idle_rw_;
  size_t open_ = 0;
  uint64_t generation_ = 0;  // module generation of the slot, sessions and login
  bool up_ = true;
  std::string down_reason_;
  std::chrono::steady_clock::time_point next_attempt_;
  std::chrono::milliseconds backoff_{100};
  bool login_wanted_ = false;
  std::optional<PinSource> pin_source_;
  std::function<void(bool, const std::string&)> listener_;
  std::atomic<uint64_t> faults_{0};
  uint64_t waits_ = 0;          // guarded by mu_
  uint64_t wait_timeouts_ = 0;  // guarded by mu_
  std::mutex login_mu_;
  std::mutex recover_mu_;
};

template <typename F, typename... Args>
CK_RV Session::Call(const char* name, F f, Args... args) const {
  CK_RV rv = token_->module().Call(name, f, args...);
  if (IsTokenFault(rv)) {
    broken_ = true;
    token_->NoteFault(name, rv, generation_);
  }
  return rv;
}

inline CK_FUNCTION_LIST* Session::fn() const {
  return token_->fn();
}

}  // namespace keywarden::hsm
