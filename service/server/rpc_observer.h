// One log line and the RPC metrics per RPC, from a server interceptor: the
// method, the caller's principal (noted by Authorize once the client
// certificate is identified), the gRPC status with the seed HRESULT from
// its ErrorDetail, the latency from arrival to status, and the CA request
// id when the request or the response carries one. Nothing of the request
// or response is logged beyond that id.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/support/server_interceptor.h>

namespace keywarden::service {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserverFactory();

// Records who the caller of the RPC running in `context` is, for its log
// line (no effect for an RPC the observer does not watch).
void NoteRpcPrincipal(const grpc::ServerContextBase& context, const std::string& principal);

}  // namespace keywarden::service
