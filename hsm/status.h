// Errors are values: every fallible call in hsm/ returns absl::Status or
// absl::StatusOr<T>. PKCS#11 failures name the call and the return code.
#pragma once

#include <optional>
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
// The CK_RV a Pkcs11Error carries (payload "type.keywarden/ckr"), if any.
std::optional<CK_RV> Pkcs11RvOf(const absl::Status& status);

// Drains OpenSSL's error queue into a status message: "<what>: <openssl reason>".
// When keywarden's provider put a token fault on the queue (kTokenFaultReason),
// the status is that fault (UNAVAILABLE, marked by HsmUnavailable) whatever
// `code` says: a CMS or X.509 routine that failed because the token did is
// the CA's fault, never the data's.
absl::Status OpenSslError(std::string_view what,
                          absl::StatusCode code = absl::StatusCode::kInternal);

// OpenSSL reason code (library ERR_LIB_USER) with which keywarden's provider
// reports a token fault.
inline constexpr int kTokenFaultReason = 0x4b57;

// Token faults: return codes that say the token (or the module, or the
// CA's own session or key handle) failed, never the data given to it:
// CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_DEVICE_MEMORY, CKR_TOKEN_NOT_PRESENT,
// CKR_TOKEN_NOT_RECOGNIZED, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,
// CKR_USER_NOT_LOGGED_IN, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_GENERAL_ERROR,
// CKR_FUNCTION_FAILED, and CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID
// (keywarden only ever passes handles the token gave it: SoftHSM2 reports a
// key whose token file went away this way).
bool IsTokenFault(CK_RV rv);

// Payload key marking a status as a token fault (UNAVAILABLE, the CA's side).
inline constexpr char kTokenFaultPayload[] = "type.keywarden/hsm-fault";

// UNAVAILABLE "HSM unavailable: <what>", marked as a token fault.
absl::Status HsmUnavailable(std::string_view what);
// True for a status made by HsmUnavailable (or Pkcs11Error for a token fault).
bool IsHsmFault(const absl::Status& status);

// Mechanism refusals: an operation's Init call (C_DecryptInit, ...)
// refused the mechanism or its parameters -- CKR_MECHANISM_INVALID,
// CKR_MECHANISM_PARAM_INVALID, CKR_ARGUMENTS_BAD, CKR_KEY_TYPE_INCONSISTENT,
// CKR_KEY_FUNCTION_NOT_PERMITTED. What the token cannot do is the CA's
// limit, not bad data from a client (e.g. OAEP with SHA-256, which SoftHSM2
// refuses at C_DecryptInit with CKR_ARGUMENTS_BAD). The token is not down.
bool IsMechanismRefusal(CK_RV rv);
// Payload key marking a status as a mechanism refusal.
inline constexpr char kMechanismRefusedPayload[] = "type.keywarden/hsm-mechanism";
// FAILED_PRECONDITION "token \"<label>\" cannot do <mechanism>: <function>
// returned <CKR_...>", marked as a mechanism refusal.
absl::Status MechanismRefused(std::string_view token_label, std::string_view mechanism,
                              std::string_view function, CK_RV rv);
bool IsMechanismRefused(const absl::Status& status);
// "CKM_RSA_PKCS_OAEP (hashAlg CKM_SHA256, mgf CKG_MGF1_SHA256)", "CKM_RSA_PKCS", ...
std::string MechanismName(const CK_MECHANISM& mechanism);

// The last mechanism refusal seen on this thread, for a caller whose
// OpenSSL call (CMS_decrypt through the provider) hides the token's
// status: the token notes it, the caller takes it (which clears it).
void NoteMechanismRefusal(const absl::Status& status);
std::optional<absl::Status> TakeMechanismRefusal();

}  // namespace keywarden::hsm
