// What the CA keeps about its CRLs in the database settings, shared by the
// CA (publication) and `keywarden restore` (which must never let a restored
// database publish a CRL number again or drop a revocation).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/storage/store.h"

namespace keywarden::service {

// The last CRL number handed out (an integer; a floor after a restore).
inline constexpr char kCrlNumberSetting[] = "crl.number";
// The last CRL published: JSON {der (base64), number, this_update, next_update}.
inline constexpr char kCrlCurrentSetting[] = "crl.current";
// Revocations a restore carried over for certificates the restored database
// does not hold (only their serial is known, from the last published CRL):
// JSON array of {serial, reason, revoked_at}. Listed on every CRL.
inline constexpr char kCarriedRevocationsSetting[] = "crl.carried_revocations";

// The highest CRL number this database has handed out or been told about:
// the larger of the crl.number setting and the number of the stored current
// CRL; 0 when there is neither. An unparsable value is an error (a counter
// silently restarting would repeat numbers).
absl::StatusOr<int64_t> HighestCrlNumber(Store& store);

// The number of the next CRL, stored before it is returned: like boulder,
// derived from time so that it never repeats even after a restore from an
// older copy: max(HighestCrlNumber + 1, now_micros). Read and write are
// one unit of work under the lock "crl.number", so concurrent publishers
// (threads, replicas) never get the same number.
absl::StatusOr<int64_t> NextCrlNumber(Store& store, int64_t now_micros);

// Microseconds since the epoch, from the system clock.
int64_t NowMicros();

struct CarriedRevocation {
  std::string serial;  // lower-case hex, as CertificateRecord::serial
  int reason = 0;      // RFC 5280 CRLReason
  int64_t revoked_at = 0;
};
// NOT an error when unset (empty).
absl::StatusOr<std::vector<CarriedRevocation>> CarriedRevocations(Store& store);
absl::Status PutCarriedRevocations(Store& store, const std::vector<CarriedRevocation>& revocations);

}  // namespace keywarden::service
