// service::ServerTls in process: what the server side of the mutual TLS
// handshake tells the handlers about the client (auth_context), with a
// client that sends its certificate and an intermediate CA.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "service/config.h"
#include "service/server/server.h"
#include "tests/service/tls_pki.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

using Issued = TlsIssued;

// The server and client certificates name localhost (the client's SAN is
// harmless).
Issued Make(const std::string& subject, const Issued* issuer, bool ca, const char* eku) {
  return MakeTlsCertificate(subject, issuer, ca, ca ? nullptr : "DNS:localhost,IP:127.0.0.1", eku);
}

std::string DerOfPem(std::string_view pem) {
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  ossl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return {};
  const auto der = pki::CertificateDer(cert.get());
  return std::string(der.begin(), der.end());
}

std::vector<std::string> AllDerOfPem(std::string_view pem) {
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<std::string> out;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    const auto der = pki::CertificateDer(x);
    out.emplace_back(der.begin(), der.end());
    X509_free(x);
  }
  ERR_clear_error();
  return out;
}

std::string Der(X509* cert) {
  const auto der = pki::CertificateDer(cert);
  return std::string(der.begin(), der.end());
}

// Answers GetCaCertificate with what the handshake told the server about
// the client: x509_pem_cert in `certificate`, each x509_pem_cert_chain value
// in `chain` (PEM, as gRPC gives them).
class PeerEcho final : public v1::Enrollment::Service {
  grpc::Status GetCaCertificate(grpc::ServerContext* context, const v1::GetCaCertificateRequest*,
                                v1::CertificateChain* out) override {
    auto auth = context->auth_context();
    for (const auto& v : auth->FindPropertyValues("x509_pem_cert")) {
      out->set_certificate(std::string(v.data(), v.size()));
    }
    for (const auto& v : auth->FindPropertyValues("x509_pem_cert_chain")) {
      out->add_chain(std::string(v.data(), v.size()));
    }
    return grpc::Status::OK;
  }
};

TEST(ServerTlsTest, HandlersSeeTheClientCertificateAndTheChainItSent) {
  TempDir dir;
  Issued root = Make("CN=tls root", nullptr, true, nullptr);
  Issued intermediate = Make("CN=tls intermediate", &root, true, nullptr);
  Issued server = Make("CN=localhost", &root, false, "serverAuth");
  Issued client = Make("CN=client,O=keywarden test", &intermediate, false, "clientAuth");
  WriteFile(dir.File("root.pem"), ToPem(root.cert.get()));
  WriteFile(dir.File("server.pem"), ToPem(server.cert.get()));
  WriteFile(dir.File("server.key"), PrivateKeyPem(server.key.get()));

  service::Config config;
  config.server.tls_certificate = dir.File("server.pem");
  config.server.tls_key = dir.File("server.key");
  config.server.client_ca = {dir.File("root.pem")};  // the intermediate is not configured
  auto tls = service::ServerTls::Load(config);
  ASSERT_TRUE(tls.ok()) << tls.status();
  PeerEcho echo;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", (*tls)->Credentials(), &port);
  builder.RegisterService(&echo);
  auto grpc_server = builder.BuildAndStart();
  ASSERT_NE(grpc_server, nullptr);
  ASSERT_NE(port, 0);

  grpc::SslCredentialsOptions creds;
  creds.pem_root_certs = ToPem(root.cert.get());
  creds.pem_cert_chain = ToPem(client.cert.get()) + ToPem(intermediate.cert.get());
  creds.pem_private_key = PrivateKeyPem(client.key.get());
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto stub = v1::Enrollment::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                                grpc::SslCredentials(creds), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::CertificateChain seen;
  auto st = stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &seen);
  ASSERT_TRUE(st.ok()) << st.error_message();

  // The authorization code reads the client's own certificate here.
  EXPECT_EQ(DerOfPem(seen.certificate()), Der(client.cert.get()));
  // x509_pem_cert_chain: what the client sent besides its own certificate
  // (OpenSSL's server-side SSL_get_peer_cert_chain, which leaves the leaf
  // out), as sent, not the verified chain: the configured root is not in it.
  ASSERT_EQ(seen.chain_size(), 1) << "no x509_pem_cert_chain property";
  const auto chain = AllDerOfPem(seen.chain(0));
  std::string listed;
  for (const auto& c : chain) {
    listed += c == Der(client.cert.get())         ? "client "
              : c == Der(intermediate.cert.get()) ? "intermediate "
              : c == Der(root.cert.get())         ? "root "
                                                  : "other ";
  }
  EXPECT_EQ(listed, "intermediate ") << seen.chain(0);

  // A client configured with its certificate alone: OpenSSL on the client
  // side completes the chain it sends from its own trust store (the root),
  // and that is what x509_pem_cert_chain holds. Whatever the client sends
  // is there, verified or not: it is not the chain the server verified.
  {
    grpc::SslCredentialsOptions leaf_only = creds;
    Issued direct_client = Make("CN=direct,O=keywarden test", &root, false, "clientAuth");
    leaf_only.pem_cert_chain = ToPem(direct_client.cert.get());
    leaf_only.pem_private_key = PrivateKeyPem(direct_client.key.get());
    grpc::ChannelArguments own;
    own.SetSslTargetNameOverride("localhost");
    own.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto direct = v1::Enrollment::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port), grpc::SslCredentials(leaf_only), own));
    grpc::ClientContext dctx;
    dctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CertificateChain direct_seen;
    auto dst = direct->GetCaCertificate(&dctx, v1::GetCaCertificateRequest(), &direct_seen);
    ASSERT_TRUE(dst.ok()) << dst.error_message();
    EXPECT_EQ(DerOfPem(direct_seen.certificate()), Der(direct_client.cert.get()));
    ASSERT_EQ(direct_seen.chain_size(), 1);
    std::string direct_listed;
    for (const auto& c : AllDerOfPem(direct_seen.chain(0))) {
      direct_listed += c == Der(direct_client.cert.get())  ? "client "
                       : c == Der(client.cert.get())       ? "first-client "
                       : c == Der(intermediate.cert.get()) ? "intermediate "
                       : c == Der(root.cert.get())         ? "root "
                                                           : "other ";
    }
    EXPECT_EQ(direct_listed, "root ") << direct_seen.chain(0);
  }

  // A client whose chain does not reach the configured root is refused.
  Issued stranger_ca = Make("CN=stranger", nullptr, true, nullptr);
  Issued stranger = Make("CN=client,O=keywarden test", &stranger_ca, false, "clientAuth");
  creds.pem_cert_chain = ToPem(stranger.cert.get());
  creds.pem_private_key = PrivateKeyPem(stranger.key.get());
  grpc::ChannelArguments args2;
  args2.SetSslTargetNameOverride("localhost");
  args2.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto refused = v1::Enrollment::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port), grpc::SslCredentials(creds), args2));
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(refused->GetCaCertificate(&rctx, v1::GetCaCertificateRequest(), &seen).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  grpc_server->Shutdown();
}

}  // namespace
}  // namespace keywarden::testing
