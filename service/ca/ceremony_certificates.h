// KRA certificates issued at a key ceremony (`keywarden ceremony run`),
// before the CA had a database. keywardend uses a KRA certificate signed by
// its own key only when its database holds it (anything else was signed
// behind the CA's back); [ca] ceremony_transcript names the ceremony's
// signed transcript, and at every start the KRA certificates it lists are
// recorded in the database -- each only if the transcript's signature
// verifies with this CA certificate's key, the file's SHA-256 is the one
// the transcript recorded, and the certificate is signed by this CA.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "service/storage/store.h"

namespace keywarden::service {

// Returns how many certificates were newly recorded. A transcript that
// does not verify, or a listed KRA certificate that is missing, altered or
// not signed by this CA, is an error: the CA does not start on it.
absl::StatusOr<size_t> RecordCeremonyCertificates(
    const std::string& transcript, X509* ca_certificate, Store& store,
    const std::function<void(const std::string& event, const std::string& details)>& audit);

}  // namespace keywarden::service
