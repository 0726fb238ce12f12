#include "service/authz.h"

#include <algorithm>

#include "hsm/strings.h"
#include "service/errors.h"

namespace keywarden::service {

const std::vector<MethodPolicy>& MethodTable() {
  using R = Role;
  static const auto* table = new std::vector<MethodPolicy>{
      // Enrollment: certificates and CRL for anyone authenticated; requests for enrollees.
      {"/keywarden.v1.Enrollment/GetCaCertificate", {}},
      {"/keywarden.v1.Enrollment/GetExchangeCertificate", {}},
      {"/keywarden.v1.Enrollment/GetCrl", {}},
      {"/keywarden.v1.Enrollment/Submit", {R::kEnrollee}},
      {"/keywarden.v1.Enrollment/Retrieve", {R::kEnrollee, R::kCertificateManager}},
      // Officer: Certificate Managers.
      {"/keywarden.v1.Officer/ListRequests", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/GetRequest", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/Approve", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/Deny", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/Revoke", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/ReleaseHold", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/FindCertificates", {R::kCertificateManager}, true},
      {"/keywarden.v1.Officer/GetArchivedKey", {R::kCertificateManager}, true},
      // KRA rollover: the Certificate Manager who fetched the blob hands the
      // rewrapped archive back (keywarden kra rewrap).
      {"/keywarden.v1.Officer/RewrapArchivedKey", {R::kCertificateManager}, true},
      // Administration: CA Administrators.
      {"/keywarden.v1.Administration/GetCaStatus", {R::kCaAdministrator}},
      {"/keywarden.v1.Administration/RenewExchangeCertificate", {R::kCaAdministrator}},
      {"/keywarden.v1.Administration/PublishCrl", {R::kCaAdministrator}},
      {"/keywarden.v1.Administration/ListKeyRecoveryAgents", {R::kCaAdministrator, R::kAuditor}},
      {"/keywarden.v1.Administration/ReloadKeyRecoveryAgents", {R::kCaAdministrator}},
      {"/keywarden.v1.Administration/ImportArchivedKey", {R::kCaAdministrator}},
      // Audit: Auditors.
      {"/keywarden.v1.Audit/ReadAudit", {R::kAuditor}},
      {"/keywarden.v1.Audit/VerifyAudit", {R::kAuditor}},
      {"/keywarden.v1.Audit/GetAuditCheckpoint", {R::kAuditor}},
      // Backup: Backup Operators.
      {"/keywarden.v1.Backup/BackupDatabase", {R::kBackupOperator}},
      // Signing: Signers; each alias also lists the principals that may use it
      // (checked by the signing service, refusals audited).
      {"/keywarden.v1.Signing/SignDigest", {R::kSigner}},
      {"/keywarden.v1.Signing/SignDigests", {R::kSigner}},
      {"/keywarden.v1.Signing/SignData", {R::kSigner}},
      {"/keywarden.v1.Signing/GetSigningKey", {R::kSigner}},
      {"/keywarden.v1.Signing/ListSigningKeys", {R::kSigner}},
      {"/keywarden.v1.Signing/IssueCertificate", {R::kSigner}},
  };
  return *table;
}

const MethodPolicy* FindMethod(std::string_view method) {
  for (const auto& p : MethodTable()) {
    if (method == p.method) return &p;
  }
  return nullptr;
}

bool IsAdministrative(const MethodPolicy& policy) {
  return std::any_of(policy.roles.begin(), policy.roles.end(), IsCimcRole);
}

AuthzDecision Authorize(const Config& config, const std::vector<Role>& roles,
                        std::string_view principal, std::string_view method) {
  AuthzDecision d;
  d.roles = roles;
  const MethodPolicy* policy = FindMethod(method);
  if (policy == nullptr) {
    d.status = Error(hresult::kAccessDenied, StrCat("no access rule for ", method));
    return d;
  }
  auto has = [&](Role r) { return std::find(d.roles.begin(), d.roles.end(), r) != d.roles.end(); };
  const bool administrative = IsAdministrative(*policy);
  if (administrative && config.flags.role_separation) {
    const auto cimc = std::count_if(d.roles.begin(), d.roles.end(), IsCimcRole);
    if (cimc > 1) {
      d.role_separation_refusal = true;
      d.status = Error(hresult::kRoleConflict, StrCat(principal, " holds ", cimc, " CIMC roles"));
      return d;
    }
  }
  if (policy->roles.empty()) return d;  // any authenticated principal
  for (Role r : policy->roles) {
    if (has(r)) return d;
  }
  if (policy->administrator_without_separation && !config.flags.role_separation &&
      has(Role::kCaAdministrator)) {
    return d;
  }
  std::vector<std::string> needed;
  for (Role r : policy->roles) needed.push_back(RoleName(r));
  d.status = Error(hresult::kAccessDenied,
                   StrCat(principal.empty() ? "(no principal)" : principal, " may not call ",
                          method, ": it needs the role ", StrJoin(needed, " or ")));
  return d;
}

absl::Status CheckSubjectNamesNoPrincipal(const Config& config, std::string_view subject,
                                          std::string_view requester,
                                          const std::vector<Role>& requester_roles) {
  const std::vector<Role> conferred = config.RolesOf(subject);
  auto held = [&](Role r) {
    return std::find(requester_roles.begin(), requester_roles.end(), r) != requester_roles.end();
  };
  if (conferred.empty() || held(Role::kCaAdministrator)) return absl::OkStatus();
  if (subject == requester && std::all_of(conferred.begin(), conferred.end(), held)) {
    return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (Role r : conferred) names.push_back(RoleName(r));
  return Error(
      hresult::kAccessDenied,
      StrCat("the certificate would name \"", subject, "\", a principal configured with the role ",
             StrJoin(names, ", "), "; only a CA Administrator may request a certificate for it"));
}

absl::Status CheckAltNamesNoPrincipal(const Config& config, const std::vector<std::string>& upns,
                                      const std::vector<std::string>& emails,
                                      std::string_view requester,
                                      const std::vector<Role>& requester_roles) {
  if (std::find(requester_roles.begin(), requester_roles.end(), Role::kCaAdministrator) !=
      requester_roles.end()) {
    return absl::OkStatus();
  }
  auto check = [&](const std::string& name, const char* kind) -> absl::Status {
    if (auto st = CheckSubjectNamesNoPrincipal(config, name, requester, requester_roles);
        !st.ok()) {
      return st;
    }
    const std::string lower = AsciiLower(name);
    for (const AccountConfig& a : config.accounts) {
      const char* whose = !a.upn.empty() && AsciiLower(a.upn) == lower       ? "UPN"
                          : !a.email.empty() && AsciiLower(a.email) == lower ? "e-mail name"
                                                                             : nullptr;
      if (whose == nullptr || a.principal == requester) continue;
      return Error(hresult::kAccessDenied,
                   StrCat("the certificate would carry the ", kind, " \"", name, "\", the ", whose,
                          " of the account of \"", a.principal,
                          "\" ([[account]]); only a CA Administrator may request a certificate "
                          "naming another account"));
    }
    return absl::OkStatus();
  };
  for (const std::string& upn : upns) {
    if (auto st = check(upn, "UPN"); !st.ok()) return st;
  }
  for (const std::string& email : emails) {
    if (auto st = check(email, "e-mail name"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace keywarden::service
