#include "service/ca/exchange.h"

#include <algorithm>
#include <optional>
#include <thread>

#include <openssl/rand.h>

#include <nlohmann/json.hpp>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "service/ca/lease.h"
#include "service/observe/log.h"

namespace keywarden::service {
namespace {

constexpr char kSettingSerials[] = "exchange.serials";
constexpr char kExchangeTemplate[] = "CAExchange";

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    if (comma > pos) out.push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

// CA subject with the CN suffixed "-Xchg" (a CN is added if the CA has none).
ossl::UniquePtr<X509_NAME> ExchangeSubject(X509* ca) {
  ossl::UniquePtr<X509_NAME> name(X509_NAME_dup(X509_get_subject_name(ca)));
  int idx = X509_NAME_get_index_by_NID(name.get(), NID_commonName, -1);
  std::string cn;
  if (idx >= 0) {
    ASN1_STRING* v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name.get(), idx));
    unsigned char* utf8 = nullptr;
    int len = ASN1_STRING_to_UTF8(&utf8, v);
    if (len > 0) cn.assign(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
    OPENSSL_free(utf8);
    X509_NAME_ENTRY_free(X509_NAME_delete_entry(name.get(), idx));
  } else {
    idx = -1;
  }
  cn += "-Xchg";
  X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.data()),
                             static_cast<int>(cn.size()), idx, 0);
  return name;
}

std::shared_ptr<X509> Shared(ossl::UniquePtr<X509> cert) {
  return std::shared_ptr<X509>(cert.release(), X509_free);
}

}  // namespace

namespace {

// Exchange certificate `serial` from the store with its key from the token;
// nullopt when it has expired.
absl::StatusOr<std::optional<ExchangeCertificate>> LoadOne(Store& store,
                                                           const std::shared_ptr<hsm::Token>& token,
                                                           const std::string& serial, int64_t now) {
  auto record = store.GetCertificate(serial);
  if (!record.ok()) return record.status();
  if (record->not_after <= now) return std::nullopt;  // expired: no longer offered or used
  const unsigned char* p = record->der.data();
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(record->der.size())));
  if (!cert)
    return absl::DataLossError(
        StrCat("exchange certificate ", serial, " in the database does not parse"));
  auto id = hsm::PublicKeySha1(X509_get0_pubkey(cert.get()));
  if (!id.ok()) return id.status();
  auto key = hsm::FindPrivateKey(token, {}, *id);
  if (!key.ok()) {
    return absl::FailedPreconditionError(StrCat("exchange certificate ", serial,
                                                ": its key is not on token \"", token->label(),
                                                "\": ", key.status().message()));
  }
  ExchangeCertificate x;
  x.serial = serial;
  x.not_before = record->not_before;
  x.not_after = record->not_after;
  x.key = *key;
  x.key_label = (*key)->label;
  x.certificate = Shared(std::move(cert));
  return x;
}

constexpr char kLease[] = "exchange";
constexpr auto kLeaseWait = std::chrono::seconds(30);

}  // namespace

absl::Status ExchangeKeys::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  certs_.clear();
  seen_serials_.clear();
  last_refresh_ = std::chrono::steady_clock::now();
  auto serials = store_.GetSetting(kSettingSerials);
  if (!serials.ok()) {
    if (absl::IsNotFound(serials.status())) return absl::OkStatus();
    return serials.status();
  }
  const int64_t now = clock_();
  for (const std::string& serial : Split(*serials)) {
    auto x = LoadOne(store_, token_, serial, now);
    if (!x.ok()) return x.status();
    if (*x) certs_.push_back(std::move(**x));
  }
  seen_serials_ = *serials;
  return absl::OkStatus();
}

absl::Status ExchangeKeys::RefreshLocked(bool force) {
  const auto steady = std::chrono::steady_clock::now();
  if (!force && steady - last_refresh_ < std::chrono::seconds(1)) return absl::OkStatus();
  last_refresh_ = steady;
  auto serials = store_.GetSetting(kSettingSerials);
  if (!serials.ok()) {
    if (absl::IsNotFound(serials.status())) return absl::OkStatus();
    return serials.status();
  }
  if (*serials == seen_serials_) return absl::OkStatus();
  const int64_t now = clock_();
  std::vector<ExchangeCertificate> loaded;
  bool complete = true;
  for (const std::string& serial : Split(*serials)) {
    auto known = std::find_if(certs_.begin(), certs_.end(),
                              [&](const ExchangeCertificate& c) { return c.serial == serial; });
    if (known != certs_.end()) {
      if (known->not_after > now) loaded.push_back(*known);
      continue;
    }
    auto x = LoadOne(store_, token_, serial, now);
    if (!x.ok()) {
      if (absl::IsFailedPrecondition(x.status())) {
        // Made by another replica whose key this process cannot see (yet):
        // keep serving with what it has, and look again next time.
        log::Warn("exchange certificate of another replica not loaded",
                  nlohmann::json{{"serial", serial}, {"error", std::string(x.status().message())}});
        complete = false;
        continue;
      }
      return x.status();
    }
    if (*x) {
      log::Info("exchange certificate loaded (renewed by another replica)",
                nlohmann::json{{"serial", serial}});
      loaded.push_back(std::move(**x));
    }
  }
  // The setting lists them oldest first; one this replica made and another
  // dropped as expired stays out.
  certs_ = std::move(loaded);
  if (complete) seen_serials_ = *serials;
  return absl::OkStatus();
}

absl::Status ExchangeKeys::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  return RefreshLocked(true);
}

const ExchangeCertificate* ExchangeKeys::FreshLocked(int64_t now) const {
  if (certs_.empty()) return nullptr;
  const ExchangeCertificate& newest = certs_.back();
  if (newest.not_after - now > config_.overlap.count()) return &newest;
  return nullptr;
}

absl::StatusOr<ExchangeCertificate> ExchangeKeys::Current() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto st = RefreshLocked(false); !st.ok()) {
      // The database is away: what this replica has is still good to hand
      // out (renewal, below, needs the database anyway).
      log::Warn("exchange certificates not re-read",
                nlohmann::json{{"error", std::string(st.message())}});
    }
    if (const ExchangeCertificate* x = FreshLocked(clock_())) return *x;
  }
  // Due (or none yet): the replica holding the lease renews.
  std::lock_guard<std::mutex> renewing(renew_mu_);
  const auto deadline = std::chrono::steady_clock::now() + kLeaseWait;
  for (;;) {
    auto lease = ScopedLease::TryTake(store_, kLease, clock_());
    if (!lease.ok()) return lease.status();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto st = RefreshLocked(true); !st.ok()) return st;
      const int64_t now = clock_();
      // Renewed by another replica (or an earlier caller here) meanwhile.
      if (const ExchangeCertificate* x = FreshLocked(now)) return *x;
      if (*lease) return RenewLocked(certs_.empty() ? "none" : "overlap reached");
      // Another replica is renewing: the newest stays usable until it expires.
      if (!certs_.empty() && certs_.back().not_after > now) return certs_.back();
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::UnavailableError(
          StrCat("no usable exchange certificate: another replica has held the renewal lease \"",
                 kLease, "\" for ", kLeaseWait.count(), " s without publishing one"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

absl::StatusOr<ExchangeCertificate> ExchangeKeys::Renew(const std::string& reason) {
  std::lock_guard<std::mutex> renewing(renew_mu_);
  std::string before;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto st = RefreshLocked(true); !st.ok()) return st;
    if (!certs_.empty()) before = certs_.back().serial;
  }
  bool waited = false;
  auto lease = ScopedLease::Take(store_, kLease, clock_, kLeaseWait, &waited);
  if (!lease.ok()) return lease.status();
  if (!*lease) {
    return absl::UnavailableError(
        StrCat("exchange key renewal: another replica has held the lease \"", kLease, "\" for ",
               kLeaseWait.count(), " s; try again later"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (auto st = RefreshLocked(true); !st.ok()) return st;
  if (waited && !certs_.empty() && certs_.back().serial != before &&
      certs_.back().not_after > clock_()) {
    // Another replica renewed while this request waited for the lease.
    return certs_.back();
  }
  return RenewLocked(reason);
}

absl::StatusOr<ExchangeCertificate> ExchangeKeys::RenewLocked(const std::string& reason) {
  const int64_t now = clock_();
  auto algorithm = hsm::ParseKeyAlgorithm(config_.key_algorithm);
  if (!algorithm.ok()) return algorithm.status();
  hsm::KeySpec spec;
  spec.algorithm = *algorithm;
  // Unique on the token whatever the database says: a restored or fresh
  // database, or another replica, may share the token with keys made in
  // the same second.
  uint8_t nonce[8];
  if (RAND_bytes(nonce, sizeof nonce) != 1) {
    return absl::InternalError("exchange key label: no random bytes from OpenSSL");
  }
  spec.label = StrCat("keywarden-xchg-", now, "-", HexString(nonce));
  spec.usage.sign = false;
  spec.usage.decrypt = true;
  auto key = hsm::GenerateKeyPair(token_, spec);
  if (!key.ok()) return key.status();

  auto subject = ExchangeSubject(issuer_.ca_certificate());
  CertificateSpec cs;
  cs.subject = subject.get();
  cs.public_key = (*key)->public_key.get();
  cs.not_before = now - 60;  // a little slack for clients' clocks
  cs.not_after = now + config_.validity.count();
  cs.key_usage = {"keyEncipherment"};
  cs.extended_key_usage = {"1.3.6.1.4.1.311.21.5"};
  auto cert = issuer_.IssueCertificate(cs);
  if (!cert.ok()) return cert.status();

  const CertificateRecord record = CertificateRecordFor(cert->get(), 0, kExchangeTemplate);
  if (auto st = store_.InsertCertificate(record); !st.ok()) return st;

  // The store's list, less the ones known to have expired: one another
  // replica made whose key this one could not load yet stays listed.
  std::vector<std::string> serials;
  auto listed = store_.GetSetting(kSettingSerials);
  if (!listed.ok() && !absl::IsNotFound(listed.status())) return listed.status();
  for (const std::string& serial : listed.ok() ? Split(*listed) : std::vector<std::string>()) {
    auto known = std::find_if(certs_.begin(), certs_.end(),
                              [&](const ExchangeCertificate& c) { return c.serial == serial; });
    const bool fully_loaded = listed.ok() && seen_serials_ == *listed;
    // Not in certs_ after a full load: it had expired.
    const bool expired = known == certs_.end() ? fully_loaded : known->not_after <= now;
    if (!expired) serials.push_back(serial);
  }
  serials.push_back(record.serial);
  const std::string setting = StrJoin(serials, ",");
  if (auto st = store_.PutSetting(kSettingSerials, setting); !st.ok()) return st;
  seen_serials_ = setting;

  ExchangeCertificate x;
  x.serial = record.serial;
  x.not_before = record.not_before;
  x.not_after = record.not_after;
  x.key = *key;
  x.key_label = spec.label;
  x.certificate = Shared(std::move(*cert));
  certs_.erase(std::remove_if(certs_.begin(), certs_.end(),
                              [&](const ExchangeCertificate& c) { return c.not_after <= now; }),
               certs_.end());
  certs_.push_back(x);
  if (audit_) {
    audit_("exchange.renewed",
           StrCat("{\"serial\":\"", x.serial, "\",\"key_label\":\"", x.key_label,
                  "\",\"not_after\":", x.not_after, ",\"reason\":\"", reason, "\"}"));
  }
  return x;
}

std::vector<ExchangeCertificate> ExchangeKeys::Unexpired() const {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_();
  std::vector<ExchangeCertificate> out;
  for (auto it = certs_.rbegin(); it != certs_.rend(); ++it) {
    if (it->not_after > now) out.push_back(*it);
  }
  return out;
}

}  // namespace keywarden::service
