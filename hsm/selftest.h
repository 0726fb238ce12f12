// HSM compatibility self-test: can this token do what each keywarden role
// needs? (seed: events 86/88, "Certificate Services could not use the
// provider specified in the registry for encryption keys" -- a CA whose
// provider cannot encrypt and wrap for archival.)
//
// Two kinds of check: the mechanisms each role needs, as the token lists
// them (C_GetMechanismList, C_GetMechanismInfo: flags and key sizes); and,
// when logged in, live operations on session objects only (CKA_TOKEN=FALSE,
// destroyed at the end): nothing is written to the token. Every signature
// and decryption is checked in software against the token's public key.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/pkcs11.h"
#include "hsm/token.h"

namespace keywarden::hsm {

enum class CheckResult { kPass, kFail, kSkip };
const char* CheckResultName(CheckResult r);  // "pass", "fail", "skip"

struct SelfTestCheck {
  std::string role;  // "CA signing", "exchange key", "archival", "KRA card", "token"
  std::string name;  // what was checked, e.g. "CKM_DES3_CBC_PAD encrypt"
  CheckResult result = CheckResult::kFail;
  CK_RV rv = CKR_OK;     // the PKCS#11 return value that decided it (CKR_OK when none)
  std::string detail;    // why it failed or was skipped, or what was found
  bool required = true;  // false: only some deployments need it (e.g. EC, OAEP)
  // The token was unavailable (down, being recovered), not unable: the
  // check says nothing about its mechanisms.
  bool token_fault = false;
};

struct SelfTestOptions {
  // Only the checks key archival needs (the daemon runs these at start).
  bool archival_only = false;
  // Live operations on session objects (needs a login); off: mechanisms only.
  bool live = true;
  // The archival scheme the daemon is configured with: "des3-rsa-pkcs1"
  // (Windows) or "aes256-rsa-oaep"; the other scheme's checks are optional.
  std::string archival_scheme = "des3-rsa-pkcs1";
  // Sessions the daemon will open at most ([hsm] max_sessions).
  size_t sessions_needed = 0;
  // The RSA modulus size of the exchange key ([exchange] key_algorithm):
  // the key size the exchange mechanisms must allow and the live key pair's.
  CK_ULONG exchange_bits = 2048;
};

std::vector<SelfTestCheck> RunSelfTest(const std::shared_ptr<Token>& token,
                                       const SelfTestOptions& options);

// True when no required check failed.
bool SelfTestPassed(const std::vector<SelfTestCheck>& checks);

// The required checks that failed, one "<name> -> <CKR_...> (<detail>)"
// each, joined with "; " (empty when none failed).
std::string SelfTestFailures(const std::vector<SelfTestCheck>& checks);

// True when a required check failed with a token fault (IsTokenFault: the
// token went away meanwhile): the run says nothing about the mechanisms.
bool SelfTestMetTokenFault(const std::vector<SelfTestCheck>& checks);

}  // namespace keywarden::hsm
