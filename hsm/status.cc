#include "hsm/status.h"
#include "hsm/strings.h"

#include <cstdio>
#include <string>

#include <utility>

#include <openssl/err.h>

#include "absl/strings/cord.h"

namespace keywarden::hsm {

namespace {

// What every token-fault message starts with (HsmUnavailable).
constexpr std::string_view kHsmUnavailablePrefix = "HSM unavailable: ";

struct RvEntry {
  CK_RV rv;
  const char* name;
};

#define RV(x) \
  { x, #x }
constexpr RvEntry kRvNames[] = {
    RV(CKR_OK),
    RV(CKR_CANCEL),
    RV(CKR_HOST_MEMORY),
    RV(CKR_SLOT_ID_INVALID),
    RV(CKR_GENERAL_ERROR),
    RV(CKR_FUNCTION_FAILED),
    RV(CKR_ARGUMENTS_BAD),
    RV(CKR_NO_EVENT),
    RV(CKR_NEED_TO_CREATE_THREADS),
    RV(CKR_CANT_LOCK),
    RV(CKR_ATTRIBUTE_READ_ONLY),
    RV(CKR_ATTRIBUTE_SENSITIVE),
    RV(CKR_ATTRIBUTE_TYPE_INVALID),
    RV(CKR_ATTRIBUTE_VALUE_INVALID),
    RV(CKR_ACTION_PROHIBITED),
    RV(CKR_DATA_INVALID),
    RV(CKR_DATA_LEN_RANGE),
    RV(CKR_DEVICE_ERROR),
    RV(CKR_DEVICE_MEMORY),
    RV(CKR_DEVICE_REMOVED),
    RV(CKR_ENCRYPTED_DATA_INVALID),
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
    RV(CKR_FUNCTION_CANCELED),
    RV(CKR_FUNCTION_NOT_PARALLEL),
    RV(CKR_FUNCTION_NOT_SUPPORTED),
    RV(CKR_KEY_HANDLE_INVALID),
    RV(CKR_KEY_SIZE_RANGE),
    RV(CKR_KEY_TYPE_INCONSISTENT),
    RV(CKR_KEY_NOT_NEEDED),
    RV(CKR_KEY_CHANGED),
    RV(CKR_KEY_NEEDED),
    RV(CKR_KEY_INDIGESTIBLE),
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
    RV(CKR_KEY_NOT_WRAPPABLE),
    RV(CKR_KEY_UNEXTRACTABLE),
    RV(CKR_MECHANISM_INVALID),
    RV(CKR_MECHANISM_PARAM_INVALID),
    RV(CKR_OBJECT_HANDLE_INVALID),
    RV(CKR_OPERATION_ACTIVE),
    RV(CKR_OPERATION_NOT_INITIALIZED),
    RV(CKR_PIN_INCORRECT),
    RV(CKR_PIN_INVALID),
    RV(CKR_PIN_LEN_RANGE),
    RV(CKR_PIN_EXPIRED),
    RV(CKR_PIN_LOCKED),
    RV(CKR_SESSION_CLOSED),
    RV(CKR_SESSION_COUNT),
    RV(CKR_SESSION_HANDLE_INVALID),
    RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    RV(CKR_SESSION_READ_ONLY),
    RV(CKR_SESSION_EXISTS),
    RV(CKR_SESSION_READ_ONLY_EXISTS),
    RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
    RV(CKR_SIGNATURE_INVALID),
    RV(CKR_SIGNATURE_LEN_RANGE),
    RV(CKR_TEMPLATE_INCOMPLETE),
    RV(CKR_TEMPLATE_INCONSISTENT),
    RV(CKR_TOKEN_NOT_PRESENT),
    RV(CKR_TOKEN_NOT_RECOGNIZED),
    RV(CKR_TOKEN_WRITE_PROTECTED),
    RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    RV(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    RV(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    RV(CKR_USER_ALREADY_LOGGED_IN),
    RV(CKR_USER_NOT_LOGGED_IN),
    RV(CKR_USER_PIN_NOT_INITIALIZED),
    RV(CKR_USER_TYPE_INVALID),
    RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    RV(CKR_USER_TOO_MANY_TYPES),
    RV(CKR_WRAPPED_KEY_INVALID),
    RV(CKR_WRAPPED_KEY_LEN_RANGE),
    RV(CKR_WRAPPING_KEY_HANDLE_INVALID),
    RV(CKR_WRAPPING_KEY_SIZE_RANGE),
    RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
    RV(CKR_RANDOM_SEED_NOT_SUPPORTED),
    RV(CKR_RANDOM_NO_RNG),
    RV(CKR_DOMAIN_PARAMS_INVALID),
    RV(CKR_CURVE_NOT_SUPPORTED),
    RV(CKR_BUFFER_TOO_SMALL),
    RV(CKR_SAVED_STATE_INVALID),
    RV(CKR_INFORMATION_SENSITIVE),
    RV(CKR_STATE_UNSAVEABLE),
    RV(CKR_CRYPTOKI_NOT_INITIALIZED),
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    RV(CKR_MUTEX_BAD),
    RV(CKR_MUTEX_NOT_LOCKED),
    RV(CKR_FUNCTION_REJECTED),
};
#undef RV

absl::StatusCode CodeFor(CK_RV rv) {
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_ACTION_PROHIBITED:
      return absl::StatusCode::kPermissionDenied;
    case CKR_ARGUMENTS_BAD:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_KEY_SIZE_RANGE:
    case CKR_CURVE_NOT_SUPPORTED:
      return absl::StatusCode::kInvalidArgument;
    case CKR_MECHANISM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
      return absl::StatusCode::kUnimplemented;
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_COUNT:
      return absl::StatusCode::kUnavailable;
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_SLOT_ID_INVALID:
      return absl::StatusCode::kNotFound;
    case CKR_HOST_MEMORY:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

std::string RvName(CK_RV rv) {
  for (const auto& e : kRvNames) {
    if (e.rv == rv) return e.name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKR_0x%08lX", static_cast<unsigned long>(rv));
  return buf;
}

absl::Status Pkcs11Error(std::string_view function, CK_RV rv, std::string_view what) {
  std::string msg = what.empty() ? StrCat(function, " returned ", RvName(rv))
                                 : StrCat(what, ": ", function, " returned ", RvName(rv));
  absl::Status st = IsTokenFault(rv) ? HsmUnavailable(msg) : absl::Status(CodeFor(rv), msg);
  st.SetPayload("type.keywarden/ckr", absl::Cord(std::to_string(rv)));
  return st;
}

std::optional<CK_RV> Pkcs11RvOf(const absl::Status& status) {
  auto p = status.GetPayload("type.keywarden/ckr");
  if (!p.has_value()) return std::nullopt;
  return static_cast<CK_RV>(std::stoul(std::string(*p)));
}

bool IsTokenFault(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
      return true;
    default:
      return false;
  }
}

absl::Status HsmUnavailable(std::string_view what) {
  absl::Status st(absl::StatusCode::kUnavailable, what.starts_with(kHsmUnavailablePrefix)
                                                      ? std::string(what)
                                                      : StrCat(kHsmUnavailablePrefix, what));
  st.SetPayload(kTokenFaultPayload, absl::Cord("1"));
  return st;
}

bool IsHsmFault(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kTokenFaultPayload).has_value();
}

bool IsMechanismRefusal(CK_RV rv) {
  switch (rv) {
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_ARGUMENTS_BAD:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
      return true;
    default:
      return false;
  }
}

absl::Status MechanismRefused(std::string_view token_label, std::string_view mechanism,
                              std::string_view function, CK_RV rv) {
  absl::Status st(absl::StatusCode::kFailedPrecondition,
                  StrCat("token \"", token_label, "\" cannot do ", mechanism, ": ", function,
                         " returned ", RvName(rv)));
  st.SetPayload(kMechanismRefusedPayload, absl::Cord("1"));
  return st;
}

bool IsMechanismRefused(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kMechanismRefusedPayload).has_value();
}

namespace {

std::string Pkcs11HashName(CK_MECHANISM_TYPE t) {
  switch (t) {
    case CKM_SHA_1:
      return "CKM_SHA_1";
    case CKM_SHA224:
      return "CKM_SHA224";
    case CKM_SHA256:
      return "CKM_SHA256";
    case CKM_SHA384:
      return "CKM_SHA384";
    case CKM_SHA512:
      return "CKM_SHA512";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKM_0x%08lX", static_cast<unsigned long>(t));
      return buf;
    }
  }
}

std::string MgfName(CK_RSA_PKCS_MGF_TYPE m) {
  switch (m) {
    case CKG_MGF1_SHA1:
      return "CKG_MGF1_SHA1";
    case CKG_MGF1_SHA224:
      return "CKG_MGF1_SHA224";
    case CKG_MGF1_SHA256:
      return "CKG_MGF1_SHA256";
    case CKG_MGF1_SHA384:
      return "CKG_MGF1_SHA384";
    case CKG_MGF1_SHA512:
      return "CKG_MGF1_SHA512";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKG_0x%08lX", static_cast<unsigned long>(m));
      return buf;
    }
  }
}

thread_local std::optional<absl::Status> last_mechanism_refusal;

}  // namespace

std::string MechanismName(const CK_MECHANISM& m) {
  switch (m.mechanism) {
    case CKM_RSA_PKCS:
      return "CKM_RSA_PKCS";
    case CKM_RSA_X_509:
      return "CKM_RSA_X_509";
    case CKM_RSA_PKCS_OAEP: {
      std::string out = "CKM_RSA_PKCS_OAEP";
      if (m.pParameter != nullptr && m.ulParameterLen == sizeof(CK_RSA_PKCS_OAEP_PARAMS)) {
        const auto* p = static_cast<const CK_RSA_PKCS_OAEP_PARAMS*>(m.pParameter);
        out += StrCat(" (hashAlg ", Pkcs11HashName(p->hashAlg), ", mgf ", MgfName(p->mgf), ")");
      }
      return out;
    }
    case CKM_RSA_PKCS_PSS:
      return "CKM_RSA_PKCS_PSS";
    case CKM_ECDSA:
      return "CKM_ECDSA";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKM_0x%08lX", static_cast<unsigned long>(m.mechanism));
      return buf;
    }
  }
}

void NoteMechanismRefusal(const absl::Status& status) {
  last_mechanism_refusal = status;
}

std::optional<absl::Status> TakeMechanismRefusal() {
  return std::exchange(last_mechanism_refusal, std::nullopt);
}

absl::Status OpenSslError(std::string_view what, absl::StatusCode code) {
  std::string reasons;
  unsigned long e;
  const char* data = nullptr;
  int flags = 0;
  bool token_fault = false;
  while ((e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) != 0) {
    std::string one;
    const bool fault = ERR_GET_LIB(e) == ERR_LIB_USER && ERR_GET_REASON(e) == kTokenFaultReason;
    token_fault = token_fault || fault;
    if (ERR_GET_LIB(e) == ERR_LIB_USER && data != nullptr && (flags & ERR_TXT_STRING) != 0) {
      // keywarden's provider: the message says it all (a token fault's
      // prefix is put back once, on the whole message, below).
      std::string_view text = data;
      if (fault && text.starts_with(kHsmUnavailablePrefix)) {
        text.remove_prefix(kHsmUnavailablePrefix.size());
      }
      one = std::string(text);
    } else {
      const char* reason = ERR_reason_error_string(e);
      one = reason != nullptr ? reason : StrCat("OpenSSL error ", e);
      if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && *data != '\0')
        one = StrCat(one, " (", data, ")");
    }
    if (!reasons.empty()) reasons += "; ";
    reasons += one;
  }
  std::string message = reasons.empty() ? std::string(what) : StrCat(what, ": ", reasons);
  if (token_fault) return HsmUnavailable(message);
  return absl::Status(code, std::move(message));
}

}  // namespace keywarden::hsm
