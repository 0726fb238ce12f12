// The Key Recovery Agents a CA archives to (seed: "Loading KRA
// Certificates", "KRA Certificate Status"; ARCHITECTURE.md §3).
//
// At service start and on an explicit reload every configured KRA
// certificate is loaded and validated: found, a KRA certificate (EKU
// 1.3.6.1.4.1.311.21.6), an RSA key that may encipher keys, within its
// validity, chaining to a trusted issuer, and not revoked. Revocation comes
// from this CA's own database for KRAs it issued, and from a current CRL in
// the configuration for KRAs of other CAs; no current CRL makes that KRA
// unusable ("the revocation server was offline", seed event 84). Only valid
// KRAs take part in the round robin; each unusable one is audited.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "service/archival/kra_selector.h"
#include "service/config.h"
#include "service/storage/store.h"

namespace keywarden::service {

inline constexpr char kOidKeyRecoveryAgent[] = "1.3.6.1.4.1.311.21.6";

enum class KraState {
  kValid,
  kNotFound,           // the file or thumbprint names no certificate (seed event 85)
  kNotKra,             // no Key Recovery Agent EKU, or a key that cannot wrap keys
  kNotYetValid,        // notBefore in the future
  kExpired,            // notAfter passed
  kUntrusted,          // no chain to a trusted issuer
  kRevoked,            // on its issuer's CRL / revoked in this CA's database
  kRevocationOffline,  // no current CRL from its issuer (seed event 84)
};
// "valid", "not-found", "not-a-kra-certificate", "not-yet-valid", "expired",
// "untrusted", "revoked", "revocation-offline".
const char* KraStateName(KraState state);

struct KraStatus {
  size_t index = 0;        // position in [kra] certificates
  std::string configured;  // the entry as configured: file path or SHA-1 thumbprint
  KraState state = KraState::kNotFound;
  uint32_t hresult = 0;  // 0 when valid
  std::string message;   // why it is not used (empty when valid)
  // From the certificate, when it could be loaded.
  std::string subject;
  std::string issuer;
  std::string serial;  // hex
  std::string sha1;    // hex thumbprint
  int64_t not_before = 0;
  int64_t not_after = 0;
  bool issued_by_this_ca = false;
};

// KRAs chosen for one archival, in round-robin order.
struct KraSelection {
  std::vector<std::shared_ptr<X509>> certificates;
  std::vector<std::string> sha1;
};

class KraRegistry {
 public:
  using Clock = std::function<int64_t()>;
  using AuditFn = std::function<void(const std::string& event, const std::string& details_json)>;

  // `ca_certificate` and `ca_chain` are trusted issuers (with [kra] trust);
  // they must outlive the registry.
  KraRegistry(const Config::Kra& config, Store& store, X509* ca_certificate,
              std::vector<X509*> ca_chain, Clock clock, AuditFn audit);

  // (Re)loads and validates every configured KRA certificate (files and CRLs
  // are read again, the database is asked again), audits the outcome, and
  // starts a new round robin at a random position. Unusable KRAs are not an
  // error here: archival requests are refused instead.
  void Load(const std::string& who);

  // Whether `serial` (hex, as NormalizeSerial gives it) is a configured KRA
  // certificate issued by this CA: revoking it must re-validate at once.
  bool IsConfiguredKraOfThisCa(const std::string& serial) const;

  // The status of every configured KRA, in configuration order.
  std::vector<KraStatus> Status() const;
  // Validates every configured KRA as Load does, without remembering,
  // auditing or keeping anything (keywardend --check-config).
  std::vector<KraStatus> Check() const;
  // Number of KRAs used per archival (N).
  size_t per_archival() const;
  // Whether archival can proceed now (0x8009400a / 0x8009400b otherwise).
  absl::Status Usable() const;

  // The next N valid KRAs. A KRA that expired since the last load triggers
  // a reload first, so an expired certificate is never used.
  absl::StatusOr<KraSelection> Select();

  // KRA rollover (keywarden kra rewrap): every KRA valid now, in
  // configuration order, with its SHA-1. Like Select, a KRA that expired
  // since the last load triggers a reload first.
  KraSelection Valid();

  // A KRA certificate by SHA-1 thumbprint (hex), for recovery: every KRA
  // certificate ever loaded is kept in the database (setting
  // "kra.certificate.<sha1>"), so archives stay recoverable after a KRA is
  // removed from the configuration, expires or is revoked. NOT_FOUND
  // (0x80092004) when unknown.
  absl::StatusOr<std::shared_ptr<X509>> FindCertificate(const std::string& sha1) const;

 private:
  struct Snapshot {
    std::vector<KraStatus> status;
    std::vector<std::shared_ptr<X509>> certificates;  // by index; null unless valid
    std::vector<std::shared_ptr<X509>> loaded;        // by index; null if it did not load
    std::unique_ptr<KraSelector> selector;
    int64_t first_expiry = 0;  // earliest notAfter among the valid ones
  };
  std::shared_ptr<Snapshot> Validate() const;
  std::shared_ptr<Snapshot> Current() const;

  Config::Kra config_;
  Store& store_;
  X509* ca_certificate_;
  std::vector<X509*> ca_chain_;
  Clock clock_;
  AuditFn audit_;
  mutable std::mutex mu_;
  std::shared_ptr<Snapshot> snapshot_;
};

}  // namespace keywarden::service
