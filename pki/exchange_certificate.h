// A client's check of the CA exchange certificate before it encrypts a
// private key to it (seed: "the client verifies the CA exchange
// certificate"; issue 4, client side). A substituted exchange certificate
// would hand the key to whoever holds its private half, so each property
// is checked and a refusal names the one that failed:
//
//   - its key is RSA (key archival encrypts to RSA only);
//   - it was issued by the CA: issuer name, authority key identifier and
//     signature all match the CA certificate's subject and key;
//   - it is within its validity period;
//   - extendedKeyUsage holds 1.3.6.1.4.1.311.21.5 (CA exchange);
//   - keyUsage is present and allows keyEncipherment;
//   - it chains through the CA certificate to a trust anchor (OpenSSL's
//     path validation: every signature, validity and CA constraint).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

inline constexpr char kOidCaExchange[] = "1.3.6.1.4.1.311.21.5";

struct ExchangeTrust {
  // The CA certificate (as Enrollment.GetCaCertificate returns it) first,
  // then the rest of its chain towards the root, if any.
  std::vector<X509*> ca_chain;
  // Operator-supplied trust anchors (any certificate of the chain, e.g. the
  // root or the CA certificate itself). Empty: the last certificate of
  // `ca_chain` is the anchor, i.e. the CA chain as the daemon sent it over
  // the authenticated channel is trusted.
  std::vector<X509*> trust_anchors;
  // Unix time to check validity at; 0 means now.
  int64_t now = 0;
};

// OK, or FailedPrecondition naming the failed check ("the CA exchange
// certificate ...: <why>"); InvalidArgument when no certificate is given.
absl::Status VerifyExchangeCertificate(X509* exchange, const ExchangeTrust& trust);

}  // namespace keywarden::pki
