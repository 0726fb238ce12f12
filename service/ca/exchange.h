// CA exchange keys (seed: "CA exchange certificate"): short-lived RSA keys
// generated on the CA token, certified by the CA key itself, that clients
// encrypt archived private keys to. A new one is made when the current one
// has less than the overlap left; older ones stay usable for decryption
// until they expire.
//
// Several keywardend replicas may share one database and one token: the
// renewal is done by the one replica that takes the store lease "exchange";
// the others re-read "exchange.serials" and load the new certificate and
// the key (found on the shared token by its public key id) instead of
// making their own.
#pragma once

#include <chrono>
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
  // The current certificate, making a new one first when it is due (under
  // the lease, so only one replica does; one that does not get it keeps
  // the still-valid newest, or waits for the other's). Picks up a renewal
  // another replica made (the store is re-read at most once a second).
  absl::StatusOr<ExchangeCertificate> Current();
  // Makes a new one now, under the lease (waiting up to 30 s for it). A
  // renewal another replica finished while this one waited for the lease
  // satisfies the request: that certificate is returned and none is made.
  absl::StatusOr<ExchangeCertificate> Renew(const std::string& reason);
  // Re-reads the store now and loads exchange certificates another replica
  // made (e.g. on a decrypt miss: an archival encrypted to one this replica
  // has not seen yet).
  absl::Status Refresh();
  // All unexpired ones, newest first (for decryption and status).
  std::vector<ExchangeCertificate> Unexpired() const;

 private:
  absl::StatusOr<ExchangeCertificate> RenewLocked(const std::string& reason);
  // Re-reads "exchange.serials" (when `force`, or when a second has passed
  // since the last look) and loads those not in certs_. A certificate
  // whose key cannot be found (yet) is skipped and tried again next time.
  absl::Status RefreshLocked(bool force);
  // The newest certificate when it is not due for renewal.
  const ExchangeCertificate* FreshLocked(int64_t now) const;

  Config::Exchange config_;
  std::shared_ptr<hsm::Token> token_;
  Issuer& issuer_;
  Store& store_;
  Clock clock_;
  AuditFn audit_;
  std::mutex renew_mu_;  // one renewal attempt at a time in this process (taken before mu_)
  mutable std::mutex mu_;
  std::vector<ExchangeCertificate> certs_;  // oldest first
  std::string seen_serials_;                // "exchange.serials" as last fully loaded
  std::chrono::steady_clock::time_point last_refresh_{};
};

}  // namespace keywarden::service
