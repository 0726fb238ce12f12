// A token (HSM partition or smart card) found by URI, with a bounded pool of
// sessions. A session is used by one thread at a time; the pool opens
// sessions on demand up to `max_sessions`, reuses them, and keeps them open
// so the login (which PKCS#11 shares across all sessions of an application)
// stays in force. No lock is held while a token call runs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/module.h"
#include "hsm/pkcs11.h"
#include "hsm/secret.h"
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

  template <typename F, typename... Args>
  CK_RV Call(const char* name, F f, Args... args) const;

  // The session hit an error that may have left it unusable (device removed,
  // session closed): it is closed instead of returned to the pool.
  void MarkBroken() { broken_ = true; }

 private:
  friend class Token;
  Session(std::shared_ptr<Token> token, CK_SESSION_HANDLE handle)
      : token_(std::move(token)), handle_(handle) {}
  void Release();

  std::shared_ptr<Token> token_;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
  bool broken_ = false;
};

class Token : public std::enable_shared_from_this<Token> {
 public:
  struct Options {
    size_t max_sessions = 32;
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

  // Logs in as the normal user, once. A wrong PIN is reported and not
  // retried, so a card's retry counter is spent at most once per call.
  absl::Status Login(const SecretString& pin);
  bool logged_in() const;

  // Waits while max_sessions sessions are in use. Never call a method that
  // acquires (Sign, Decrypt, GenerateRandom, FindPrivateKey, ...) while
  // holding a Session from the same token: with every session leased, two
  // threads doing that wait for each other forever.
  absl::StatusOr<Session> Acquire();

  const std::string& label() const { return info_.label; }
  const std::string& serial() const { return info_.serial; }
  const SlotToken& info() const { return info_; }
  Module& module() const { return *module_; }
  CK_FUNCTION_LIST* fn() const { return module_->functions(); }

  // Token-side primitives used by the key and provider layers.
  absl::StatusOr<std::vector<uint8_t>> Sign(CK_OBJECT_HANDLE key, CK_MECHANISM mechanism,
                                            std::span<const uint8_t> data, size_t max_out);
  absl::StatusOr<SecretBytes> Decrypt(CK_OBJECT_HANDLE key, CK_MECHANISM mechanism,
                                      std::span<const uint8_t> data, size_t max_out);
  absl::StatusOr<std::vector<uint8_t>> GenerateRandom(size_t n);

  // Sessions currently open (idle + leased); for tests and metrics.
  size_t open_sessions() const;

 private:
  friend class Session;
  Token(std::shared_ptr<Module> module, SlotToken info, Options options)
      : module_(std::move(module)), info_(std::move(info)), options_(options) {}
  void Return(CK_SESSION_HANDLE handle, bool broken);

  std::shared_ptr<Module> module_;
  SlotToken info_;
  Options options_;

  mutable std::mutex mu_;
  std::condition_variable available_;
  std::vector<CK_SESSION_HANDLE> idle_;
  size_t open_ = 0;
  bool logged_in_ = false;
  std::mutex login_mu_;
};

template <typename F, typename... Args>
CK_RV Session::Call(const char* name, F f, Args... args) const {
  return token_->module().Call(name, f, args...);
}

inline CK_FUNCTION_LIST* Session::fn() const {
  return token_->fn();
}

}  // namespace keywarden::hsm
