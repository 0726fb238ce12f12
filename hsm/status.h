// Errors are values: every fallible call in hsm/ returns absl::Status or
// absl::StatusOr<T>. PKCS#11 failures name the call and the return code.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/pkcs11.h"
#include "hsm/strings.h"

namespace keywarden::hsm {

// "CKR_PIN_INCORRECT" for 0xA0; "CKR_0x..." for codes the standard does not name.
std::string RvName(CK_RV rv);

// Status for a failed PKCS#11 call: "<what>: C_Login returned CKR_PIN_INCORRECT".
// The gRPC-style code follows the meaning of rv (bad PIN -> PERMISSION_DENIED,
// bad argument -> INVALID_ARGUMENT, device errors -> UNAVAILABLE, ...).
absl::Status Pkcs11Error(std::string_view function, CK_RV rv, std::string_view what = {});

// Drains OpenSSL's error queue into a status message: "<what>: <openssl reason>".
absl::Status OpenSslError(std::string_view what,
                          absl::StatusCode code = absl::StatusCode::kInternal);

}  // namespace keywarden::hsm
