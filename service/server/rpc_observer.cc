#include "service/server/rpc_observer.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "keywarden/v1/keywarden.pb.h"
#include "service/observe/log.h"
#include "service/observe/metrics.h"

namespace keywarden::service {
namespace {

// Principals of the RPCs in flight, by their server context.
std::mutex g_mu;
std::map<const grpc::ServerContextBase*, std::string>& Principals() {
  static auto* m = new std::map<const grpc::ServerContextBase*, std::string>();
  return *m;
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

// An int64 field "request_id" of the message, or of one of its message
// fields (e.g. EnrollmentResult.request_id inside a response); 0 if none.
int64_t RequestIdOf(const google::protobuf::Message& m, int depth = 0) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  if (const auto* f = d->FindFieldByName("request_id");
      f != nullptr && !f->is_repeated() &&
      f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_INT64) {
    if (int64_t id = r->GetInt64(m, f); id != 0) return id;
  }
  if (depth > 0) return 0;
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    if (f->is_repeated() || f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE ||
        !r->HasField(m, f)) {
      continue;
    }
    if (int64_t id = RequestIdOf(r->GetMessage(m, f), depth + 1); id != 0) return id;
  }
  return 0;
}

class RpcObserver final : public grpc::experimental::Interceptor {
 public:
  explicit RpcObserver(grpc::experimental::ServerRpcInfo* info)
      : method_(info->method() != nullptr ? info->method() : ""),
        context_(info->server_context()),
        start_(std::chrono::steady_clock::now()) {
    // Messages are looked into only for keywarden's own methods, whose
    // handlers use the generated protobuf types (the health service and
    // unknown methods carry raw bytes).
    const size_t slash = method_.rfind('/');
    if (method_.rfind("/keywarden.v1.", 0) == 0 && slash > 1) {
      const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          method_.substr(1, slash - 1));
      protobuf_ = service != nullptr && service->FindMethodByName(method_.substr(slash + 1));
    }
    std::lock_guard<std::mutex> lock(g_mu);
    Principals()[context_];
  }
  ~RpcObserver() override {
    std::lock_guard<std::mutex> lock(g_mu);
    Principals().erase(context_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (protobuf_ && request_id_ == 0) {
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
        if (void* m = methods->GetRecvMessage()) {
          request_id_ = RequestIdOf(*static_cast<const google::protobuf::Message*>(m));
        }
      }
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
        if (const void* m = methods->GetSendMessage()) {
          request_id_ = RequestIdOf(*static_cast<const google::protobuf::Message*>(m));
        }
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Finish(methods->GetSendStatus());
    }
    methods->Proceed();
  }

 private:
  void Finish(const grpc::Status& status) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const char* code = CodeName(status.error_code());
    std::string principal;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      auto it = Principals().find(context_);
      if (it != Principals().end()) principal = it->second;
    }
    // A method name a client made up is not a label (unbounded): "other".
    const bool known = protobuf_ || method_ == "/grpc.health.v1.Health/Check" ||
                       method_ == "/grpc.health.v1.Health/Watch" ||
                       method_ == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
    const std::string label = known ? method_ : "other";
    metrics::Add(metrics::kRpcs, {{"method", label}, {"code", code}});
    metrics::Observe(metrics::kRpcSeconds, {{"method", label}, {"code", code}}, seconds);

    nlohmann::json fields = {
        {"method", method_.size() <= 200 ? method_ : method_.substr(0, 200)},
        {"principal", principal.empty() ? "-" : principal},
        {"status", code},
        {"latency_ms", static_cast<double>(static_cast<int64_t>(seconds * 1e6)) / 1e3}};
    if (!status.ok()) {
      v1::RpcStatus rpc;
      v1::ErrorDetail detail;
      if (!status.error_details().empty() && rpc.ParseFromString(status.error_details())) {
        for (const auto& any : rpc.details()) {
          if (any.UnpackTo(&detail) && detail.hresult() != 0) {
            char hex[16];
            std::snprintf(hex, sizeof hex, "0x%08x", detail.hresult());
            fields["hresult"] = hex;
            break;
          }
        }
      }
    }
    if (request_id_ != 0) fields["request_id"] = request_id_;
    log::Write(status.ok() ? log::Level::kInfo : log::Level::kWarning, "rpc", fields);
  }

  const std::string method_;
  const grpc::ServerContextBase* context_;
  const std::chrono::steady_clock::time_point start_;
  bool protobuf_ = false;
  int64_t request_id_ = 0;
};

class RpcObserverFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcObserver(info);
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserverFactory() {
  return std::make_unique<RpcObserverFactory>();
}

void NoteRpcPrincipal(const grpc::ServerContextBase& context, const std::string& principal) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = Principals().find(&context);
  if (it != Principals().end()) it->second = principal;
}

}  // namespace keywarden::service
