// CA exchange keys (seed: "CA exchange certificate"): short-lived RSA keys
// generated on the CA token, certified by the CA key itself, that clients
// encrypt archived private keys to. A new one is made when the current one
// has less than the overlap left; older ones stay usable for decryption
// until they expire.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/keys.h"
#include "hsm/token.h"
#include "service/ca/issuer.h"
#include "service/config.h"
#include "service/storage/store.h"

namespace keywarden::service {

struct ExchangeCertificate {
  std::shared_ptr<X509> certificate;
  std::shared_ptr<hsm::TokenKey> key;
  std::string serial;
  int64_t not_before = 0;
  int64_t not_after = 0;
  std::string key_label;
};

class ExchangeKeys {
 public:
  using Clock = std::function<int64_t()>;
  // Called with (event, details JSON) for every exchange key made.
  using AuditFn = std::function<void(const std::string&, const std::string&)>;

  ExchangeKeys(const Config::Exchange& config, std::shared_ptr<hsm::Token> token, Issuer& issuer,
               Store& store, Clock clock, AuditFn audit)
      : config_(config),
        token_(std::move(token)),
        issuer_(issuer),
        store_(store),
        clock_(std::move(clock)),
        audit_(std::move(audit)) {}

  // Loads the exchange certificates recorded in the store and their keys.
  absl::Status Load();
  // The current certificate, making a new one first when it is due.
  absl::StatusOr<ExchangeCertificate> Current();
  // Makes a new one now.
  absl::StatusOr<ExchangeCertificate> Renew(const std::string& reason);
  // All unexpired ones, newest first (for decryption and status).
  std::vector<ExchangeCertificate> Unexpired() const;

 private:
  absl::StatusOr<ExchangeCertificate> RenewLocked(const std::string& reason);

  Config::Exchange config_;
  std::shared_ptr<hsm::Token> token_;
  Issuer& issuer_;
  Store& store_;
  Clock clock_;
  AuditFn audit_;
  mutable std::mutex mu_;
  std::vector<ExchangeCertificate> certs_;  // oldest first
};

}  // namespace keywarden::service
