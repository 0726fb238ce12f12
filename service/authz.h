// Who may call what. Every RPC has one row in one table (authz.cc), which
// docs/API.md mirrors and a test checks against the proto: an RPC without
// a row is refused.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "service/config.h"

namespace keywarden::service {

struct MethodPolicy {
  const char* method;       // "/keywarden.v1.Enrollment/Submit"
  std::vector<Role> roles;  // any one of them suffices; empty: any authenticated principal
  // Without role separation a CA Administrator may also do this (the seed:
  // "the Certificate Manager (or administrator of the server, if role
  // separation is not enabled)").
  bool administrator_without_separation = false;
};

const std::vector<MethodPolicy>& MethodTable();
const MethodPolicy* FindMethod(std::string_view method);

// An RPC is administrative when it needs one of the four CIMC roles; with
// RoleSeparationEnabled, a principal holding more than one CIMC role is
// refused every administrative RPC (CERTSRV_E_ROLECONFLICT).
bool IsAdministrative(const MethodPolicy& policy);

struct AuthzDecision {
  absl::Status status;  // OK when allowed
  bool role_separation_refusal = false;
  std::vector<Role> roles;  // what the principal holds
};

// `roles`: what the caller's certificate holds (service/trust decides).
AuthzDecision Authorize(const Config& config, const std::vector<Role>& roles,
                        std::string_view principal, std::string_view method);

// A certificate whose subject is a configured principal could be presented
// for that principal's roles (ARCHITECTURE.md §10). OK unless `subject`
// names one; then only a CA Administrator may ask for it, or the principal
// itself when it already holds every role bound to that subject (it gains
// nothing). Otherwise E_ACCESSDENIED naming the subject and its roles.
absl::Status CheckSubjectNamesNoPrincipal(const Config& config, std::string_view subject,
                                          std::string_view requester,
                                          const std::vector<Role>& requester_roles);

// The same for the names a certificate's subjectAltName would carry (UPNs
// and e-mail names; other types name no account). A name that is the UPN
// or e-mail of an [[account]] other than the requester's (compared without
// ASCII case, so a near miss by case is refused too) may only be asked for
// by a CA Administrator; a name that is itself a configured principal is
// checked as CheckSubjectNamesNoPrincipal does. E_ACCESSDENIED naming the
// name and whose it is.
absl::Status CheckAltNamesNoPrincipal(const Config& config, const std::vector<std::string>& upns,
                                      const std::vector<std::string>& emails,
                                      std::string_view requester,
                                      const std::vector<Role>& requester_roles);

}  // namespace keywarden::service
