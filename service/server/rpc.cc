#include "service/server/rpc.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/support/server_interceptor.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "service/authz.h"
#include "service/bounded.h"
#include "service/errors.h"
#include "service/server/limits.h"
#include "service/server/rpc_observer.h"
#include "service/storage/store.h"

namespace keywarden::service {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto code = static_cast<grpc::StatusCode>(static_cast<int>(status.code()));
  std::string message(status.message());
  if (IsDatabaseFault(status)) {
    // The CA's database failed: never a code that blames the client
    // (RESOURCE_EXHAUSTED for a full disk, PERMISSION_DENIED for a
    // read-only file). A corrupt one stays DATA_LOSS.
    if (code != grpc::StatusCode::DATA_LOSS) code = grpc::StatusCode::UNAVAILABLE;
    if (message.find("database unavailable") == std::string::npos) {
      message = StrCat("database unavailable: ", message);
    }
  }
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

namespace {

// Fills in the statuses gRPC makes itself, with no message, when a request
// message cannot be parsed (bytes that are not protobuf, or a string field
// that is not UTF-8): INTERNAL from the sync API, UNIMPLEMENTED from the
// callback API (Signing). That is the client's fault, and every error has a
// message: INVALID_ARGUMENT (E_INVALIDARG) naming the method. An unknown
// method keeps UNIMPLEMENTED and gets a message too. keywarden's own
// errors always have a message, so none of them is touched.
class ParseFailureInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit ParseFailureInterceptor(grpc::experimental::ServerRpcInfo* info)
      : method_(info->method() != nullptr ? info->method() : "") {
    // "/keywarden.v1.Signing/SignDigest": one of keywarden's own methods?
    const size_t slash = method_.rfind('/');
    if (method_.rfind("/keywarden.v1.", 0) == 0 && slash > 1) {
      const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          method_.substr(1, slash - 1));
      known_ =
          service != nullptr && service->FindMethodByName(method_.substr(slash + 1)) != nullptr;
    }
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      const bool parse_failure = st.error_message().empty() &&
                                 (st.error_code() == grpc::StatusCode::INTERNAL ||
                                  (st.error_code() == grpc::StatusCode::UNIMPLEMENTED && known_));
      if (parse_failure) {
        methods->ModifySendStatus(ToGrpc(Error(
            hresult::kInvalidArg,
            StrCat("the request message for ", method_,
                   " could not be parsed: it is not valid protobuf for this method, or a string "
                   "field holds bytes that are not UTF-8"))));
      } else if (st.error_code() == grpc::StatusCode::UNIMPLEMENTED && st.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                               StrCat("keywardend has no method ", Echo(method_))));
      }
    }
    methods->Proceed();
  }

 private:
  std::string method_;
  bool known_ = false;
};

class ParseFailureInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new ParseFailureInterceptor(info);
  }
};

std::string Property(const grpc::AuthContext& auth, const char* name) {
  std::string out;
  for (const auto& v : auth.FindPropertyValues(name)) out.append(v.data(), v.size());
  return out;
}

}  // namespace

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<ParseFailureInterceptorFactory>());
  // After it: the log line and metrics see the status the client gets.
  out.push_back(MakeRpcObserverFactory());
  return out;
}

absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method) {
  auto auth = context.auth_context();
  const std::string leaf = auth ? Property(*auth, GRPC_X509_PEM_CERT_PROPERTY_NAME) : "";
  if (leaf.empty()) return absl::UnauthenticatedError("no verified client certificate");
  auto peer = ca.trust().Identify(leaf, Property(*auth, GRPC_X509_PEM_CERT_CHAIN_PROPERTY_NAME));
  if (!peer.ok()) return peer.status();
  NoteRpcPrincipal(context, (*peer)->principal);
  // Revocations made through another replica of this CA count here too.
  ca.TakeOverReplicaRevocations();
  if (auto st = ca.trust().CheckRevocation(**peer); !st.ok()) {
    static RefusalLimiter limiter;  // per certificate and event
    const std::string event = HResultOf(st) == hresult::kCertRevoked.code ? "authz.revoked"
                              : HResultOf(st) == hresult::kCertExpired.code
                                  ? "authz.expired"
                                  : "authz.revocation_offline";
    if (int64_t refused = limiter.Take(StrCat((*peer)->sha256, event)); refused > 0) {
      ca.Audit((*peer)->principal, event,
               nlohmann::json{{"method", method},
                              {"serial", (*peer)->serial},
                              {"client_ca", (*peer)->client_ca},
                              {"refused_calls", refused},
                              {"reason", std::string(st.message())}}
                   .dump());
    }
    return st;
  }
  Caller caller;
  caller.principal = (*peer)->principal;
  AuthzDecision d = service::Authorize(ca.config(), (*peer)->roles, caller.principal, method);
  caller.roles = d.roles;
  if (!d.status.ok()) {
    // At most once a minute per principal, event and method (a bounded set),
    // with the count of the calls refused since the last record.
    static RefusalLimiter limiter;
    const char* event = d.role_separation_refusal ? "authz.role_separation" : "authz.denied";
    if (int64_t refused = limiter.Take(StrCat(caller.principal, "\n", event, "\n", method));
        refused > 0) {
      ca.Audit(caller.principal, event,
               nlohmann::json{{"method", method},
                              {"reason", std::string(d.status.message())},
                              {"refused_calls", refused}}
                   .dump());
    }
    return d.status;
  }
  return caller;
}

absl::StatusOr<Caller> Authorize(CertificateAuthority& ca, const grpc::ServerContextBase& context,
                                 const char* method, const google::protobuf::Message& request) {
  auto caller = Authorize(ca, context, method);
  if (!caller.ok()) return caller;
  // Before the handler stores or audits anything of the request.
  if (absl::Status st = CheckRequestLimits(request); !st.ok()) return st;
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
  out->set_public_key_sha256(r.spki_sha256);
  out->set_request_sha256(r.request_sha256);
}

void Fill(const CertificateRecord& c, v1::CertificateInfo* out) {
  out->set_serial(c.serial);
  out->set_request_id(c.request_id);
  out->set_subject(c.subject);
  out->set_upn(c.upn);
  out->set_email(c.email);
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
