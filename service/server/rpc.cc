#include "service/server/rpc.h"

#include <openssl/pem.h>

#include <array>
#include <cstring>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/authz.h"
#include "service/errors.h"

namespace keywarden::service {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(static_cast<int>(status.code()));
  const std::string message(status.message());
  v1::ErrorDetail detail;
  detail.set_message(message);
  if (auto hr = HResultOf(status)) {
    detail.set_hresult(*hr);
    if (const HResult* known = FindHResult(*hr)) detail.set_symbol(known->symbol);
  }
  for (const auto& c : CandidatesOf(status)) detail.add_candidates(c);
  v1::RpcStatus rpc;
  rpc.set_code(static_cast<int32_t>(code));
  rpc.set_message(message);
  rpc.add_details()->PackFrom(detail);
  return grpc::Status(code, message, rpc.SerializeAsString());
}

std::string PrincipalOf(const grpc::ServerContextBase& context) {
  auto auth = context.auth_context();
  if (!auth) return {};
  auto pems = auth->FindPropertyValues("x509_pem_cert");
  if (pems.empty()) return {};
  const auto& pem = pems.front();
  // Decoding the certificate costs more than a small RPC (tens of
  // microseconds): each thread remembers the last few clients it served.
  struct Seen {
    std::string pem;
    std::string principal;
  };
  thread_local std::array<Seen, 8> seen;
  thread_local size_t next = 0;
  for (const Seen& s : seen) {
    if (!s.principal.empty() && s.pem.size() == pem.size() &&
        std::memcmp(s.pem.data(), pem.data(), pem.size()) == 0) {
      return s.principal;
    }
  }
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return {};
  std::string principal = pki::FormatName(X509_get_subject_name(cert.get()));
  Seen& slot = seen[next++ % seen.size()];
  slot.pem.assign(pem.data(), pem.size());
  slot.principal = principal;
  return principal;
}

bool Caller::Has(Role r) const {
  return std::find(roles.begin(), roles.end(), r) != roles.end();
}

absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method) {
  Caller caller;
  caller.principal = PrincipalOf(context);
  if (caller.principal.empty()) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  AuthzDecision d = service::Authorize(ca.config(), caller.principal, method);
  caller.roles = d.roles;
  if (!d.status.ok()) {
    ca.Audit(
        caller.principal, d.role_separation_refusal ? "authz.role_separation" : "authz.denied",
        nlohmann::json{{"method", method}, {"reason", std::string(d.status.message())}}.dump());
    return d.status;
  }
  return caller;
}

v1::Disposition ToProto(Disposition d) {
  switch (d) {
    case Disposition::kPending:
      return v1::DISPOSITION_PENDING;
    case Disposition::kIssued:
      return v1::DISPOSITION_ISSUED;
    case Disposition::kDenied:
      return v1::DISPOSITION_DENIED;
    case Disposition::kFailed:
      return v1::DISPOSITION_FAILED;
  }
  return v1::DISPOSITION_UNSPECIFIED;
}

void Fill(const RequestRecord& r, v1::RequestInfo* out) {
  out->set_request_id(r.id);
  out->set_requester(r.requester);
  out->set_template_name(r.template_name);
  out->set_format(r.format);
  out->set_subject(r.subject);
  out->set_disposition(ToProto(r.disposition));
  out->set_message(r.disposition_message);
  out->set_status_code(r.status_code);
  out->set_submitted_at(r.submitted_at);
  out->set_resolved_at(r.resolved_at);
  out->set_resolved_by(r.resolved_by);
  out->set_serial(r.serial);
  out->set_has_archived_key(r.archived_key.has_value());
}

void Fill(const CertificateRecord& c, v1::CertificateInfo* out) {
  out->set_serial(c.serial);
  out->set_request_id(c.request_id);
  out->set_subject(c.subject);
  out->set_upn(c.upn);
  out->set_template_name(c.template_name);
  out->set_sha1(c.sha1);
  out->set_sha256(c.sha256);
  out->set_not_before(c.not_before);
  out->set_not_after(c.not_after);
  out->set_revoked(c.revoked);
  out->set_revocation_reason(c.revocation_reason);
  out->set_revoked_at(c.revoked_at);
  out->set_certificate(std::string(c.der.begin(), c.der.end()));
}

void Fill(const EnrollmentOutcome& o, const std::vector<std::vector<uint8_t>>& chain,
          v1::EnrollmentResult* out) {
  out->set_request_id(o.request.id);
  out->set_disposition(ToProto(o.request.disposition));
  out->set_message(o.request.disposition_message);
  out->set_status_code(o.request.status_code);
  if (o.certificate) {
    out->set_certificate(std::string(o.certificate->der.begin(), o.certificate->der.end()));
    for (const auto& c : chain) out->add_chain(std::string(c.begin(), c.end()));
  }
  out->set_cmc_response(std::string(o.cmc_response.begin(), o.cmc_response.end()));
}

}  // namespace keywarden::service
