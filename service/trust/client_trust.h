// Who a TLS client is, and whether it may still be: the client certificate
// is identified by the client CA it chains to *and* its subject (or by its
// pinned SHA-256), and checked against current revocation data on every
// call (ARCHITECTURE.md §10).
//
// - This CA's own revocations are held in memory and updated at every
//   revoke and CRL publication (no CRL file, no restart).
// - Other client CAs are checked against CRL files from [server]
//   client_crls, each verified with a certificate of a client_ca file and
//   reloaded on SIGHUP and when the file changes. A certificate whose issuer
//   has no current CRL is refused ("revocation offline") unless its client
//   CA is in client_crl_optional.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "service/config.h"

namespace keywarden::service {

// One link of a verified chain below its trust anchor: a certificate and
// the issuer that must say whether it is revoked.
struct ChainLink {
  std::string serial;   // lower-case hex, as stored
  std::string subject;  // RFC 4514, for messages
  std::string issuer;   // RFC 4514, for messages
  bool issued_by_this_ca = false;
  std::string issuer_sha256;  // the issuing certificate (a client_ca file's), for its CRL
};

struct PeerIdentity {
  std::string principal;  // RFC 4514 subject of the client certificate
  std::string sha256;     // of its DER
  std::string serial;
  std::vector<Role> roles;
  int64_t not_after = 0;
  std::vector<ChainLink> links;      // leaf first; the anchor itself is not a link
  std::string client_ca;             // the client_ca file of the verified chain
  bool revocation_optional = false;  // that file is in client_crl_optional
};

class ClientTrust {
 public:
  using Clock = std::function<int64_t()>;

  // Reads every client_ca file and every client_crls file. A client CA file
  // that does not read is an error; a CRL that does not read or verify is
  // reported by Reload and its issuer's clients are "revocation offline".
  static absl::StatusOr<std::unique_ptr<ClientTrust>> Load(const Config& config,
                                                           X509* ca_certificate, Clock clock);
  ~ClientTrust();

  // The verified client certificate (PEM, as gRPC gives it) and the chain
  // the client sent, if any. UNAUTHENTICATED if it chains to no client CA.
  // Results are cached per certificate; the revocation check is not.
  absl::StatusOr<std::shared_ptr<const PeerIdentity>> Identify(std::string_view leaf_pem,
                                                               std::string_view chain_pem);

  // OK, or why this identity may not be served now: revoked (CERT_E_REVOKED,
  // with the date and reason), expired, or no current CRL of its issuer
  // (CRYPT_E_REVOCATION_OFFLINE, a CA-side condition: UNAVAILABLE).
  absl::Status CheckRevocation(const PeerIdentity& peer);

  // This CA's revocations (serial -> when, why): all of them at start, one
  // at each revocation before its CRL is made, and the database's whole set
  // at every CRL publication or adoption (ReplaceOwnRevocations). Every
  // addition is numbered, so a set read from the database before a
  // revocation was added can never drop it; only a released certificateHold
  // leaves the set.
  struct Revocation {
    int64_t revoked_at = 0;
    int reason = 0;
  };
  void AddOwnRevocations(const std::map<std::string, Revocation>& revoked);
  // The number of the newest addition: take it *before* reading the
  // database, and hand it to ReplaceOwnRevocations / ReleaseOwnRevocation.
  uint64_t OwnRevocationsMark();
  // The set becomes `all` (read from the database after `mark` was taken)
  // plus every entry added after `mark` (a revocation made meanwhile).
  void ReplaceOwnRevocations(const std::map<std::string, Revocation>& all, uint64_t mark);
  // A released certificateHold: `serial` leaves the set unless it was added
  // again after `mark` (taken before the release was committed: a
  // revocation made after the release stays).
  void ReleaseOwnRevocation(const std::string& serial, uint64_t mark);

  // Reads the CRL files again; one line per file saying what was loaded or
  // why not. Also called by CheckRevocation, at most once a second, when a
  // file's size or modification time changed.
  std::vector<std::string> ReloadCrls();
  // SIGHUP: the client_ca files (kept as they were if one does not read) and
  // the CRLs; identities are verified again on their next call.
  std::vector<std::string> Reload();

 private:
  struct ClientCa;
  struct LoadedCrl;
  struct Anchors {
    uint64_t generation = 0;  // tells cached identities of other anchors apart
    std::vector<std::unique_ptr<ClientCa>> cas;
  };
  absl::StatusOr<std::shared_ptr<const Anchors>> ReadAnchors() const;
  std::shared_ptr<const Anchors> CurrentAnchors();
  ClientTrust(const Config& config, Clock clock);
  void ReloadIfChanged();

  const Config& config_;
  Clock clock_;
  ossl::UniquePtr<X509> this_ca_;
  // Identify's memory of the last identities it verified, by leaf PEM.
  struct SeenIdentity {
    uint64_t generation = 0;
    std::string pem;
    std::shared_ptr<const PeerIdentity> peer;
  };
  std::mutex seen_mu_;
  std::array<SeenIdentity, 64> seen_;
  size_t seen_next_ = 0;

  std::shared_mutex mu_;  // guards anchors_, own_, crls_, crl_stamps_
  std::shared_ptr<const Anchors> anchors_;
  std::map<std::string, Revocation> own_;
  std::map<std::string, uint64_t> own_added_;  // serial -> number of its addition
  uint64_t own_mark_ = 0;                      // the newest addition's number
  std::map<std::string, std::vector<std::shared_ptr<const LoadedCrl>>> crls_;  // by issuer sha256
  std::map<std::string, std::pair<int64_t, int64_t>> crl_stamps_;  // path -> (size, mtime ns)
  std::atomic<int64_t> last_stat_{0};
};

// RFC 5280 CRLReason name ("keyCompromise"), or the number.
std::string CrlReasonName(int reason);

}  // namespace keywarden::service
