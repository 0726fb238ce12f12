#include "service/server/server.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "hsm/ossl.h"
#include "hsm/secret.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/cores.h"
#include "pki/files.h"
#include "service/server/limits.h"
#include "service/server/rpc.h"
#include "service/server/services.h"

namespace keywarden::service {
namespace {

// The last OpenSSL error, for messages (empty when there is none).
std::string OpensslReason() {
  const unsigned long e = ERR_peek_last_error();
  ERR_clear_error();
  if (e == 0) return {};
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return StrCat(" (", buf, ")");
}

std::string SerialHex(X509* cert) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn) return "?";
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex != nullptr ? hex : "?";
  OPENSSL_free(hex);
  return out;
}

std::string TimeText(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Pem(const std::vector<ossl::UniquePtr<X509>>& certs) {
  std::string out;
  for (const auto& c : certs) out += pki::ToPem(c.get());
  return out;
}

// Server credentials built from gRPC's C API: SSL server credentials whose
// certificate config is fetched before every handshake
// (grpc_ssl_server_credentials_create_options_using_config_fetcher, "to
// reload the certificates and keys of the SSL server without interrupting
// the operation of the server"). The C++ API has no wrapper for it; this is
// what grpc::SslServerCredentials' own wrapper does for a static config.
class FetcherServerCredentials final : public grpc::ServerCredentials {
 public:
  FetcherServerCredentials(grpc_ssl_server_certificate_config_callback fetch, void* user_data) {
    // The base class initialised gRPC; the C credentials take ownership of the options.
    creds_ = grpc_ssl_server_credentials_create_with_options(
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, fetch, user_data));
  }
  ~FetcherServerCredentials() override { grpc_server_credentials_release(creds_); }

  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    // keywardend authorizes in its handlers; ignoring a processor silently
    // would skip whatever check its caller expected.
    std::fprintf(stderr, "keywardend: an AuthMetadataProcessor is not supported\n");
    std::abort();
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* creds_ = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServerTls>> ServerTls::Load(const Config& config) {
  std::unique_ptr<ServerTls> tls(new ServerTls(config));
  std::vector<std::string> description;
  auto first = tls->Read(&description);
  if (!first.ok()) return first.status();
  tls->next_.store(*first);
  tls->description_ = std::move(description);
  return tls;
}

ServerTls::~ServerTls() {
  if (auto* pending = next_.exchange(nullptr)) grpc_ssl_server_certificate_config_destroy(pending);
}

absl::StatusOr<grpc_ssl_server_certificate_config*> ServerTls::Read(
    std::vector<std::string>* description) {
  const std::string& cert_path = config_.server.tls_certificate;
  const std::string& key_path = config_.server.tls_key;

  // The certificate, leaf first, then its chain.
  auto chain = pki::ReadPemCertificates(cert_path);
  if (!chain.ok()) {
    return absl::FailedPreconditionError(StrCat("TLS certificate: ", chain.status().message()));
  }
  X509* leaf = chain->front().get();
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
    return absl::FailedPreconditionError(
        StrCat("TLS certificate ", cert_path, " expired on ", TimeText(X509_get0_notAfter(leaf))));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(leaf)) >= 0) {
    return absl::FailedPreconditionError(StrCat("TLS certificate ", cert_path,
                                                " is not valid before ",
                                                TimeText(X509_get0_notBefore(leaf))));
  }

  // The key: never printed; every copy we make is wiped.
  ossl::UniquePtr<EVP_PKEY> key;
  {
    auto raw = pki::ReadFileBytes(key_path, 1 << 20);
    if (!raw.ok()) {
      return absl::FailedPreconditionError(
          StrCat("TLS key ", key_path, ": ", raw.status().message()));
    }
    hsm::SecretBytes bytes(*raw);
    OPENSSL_cleanse(raw->data(), raw->size());
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    // No passphrase callback: an encrypted key is refused, never prompted for.
    key.reset(PEM_read_bio_PrivateKey(
        bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr));
    if (!key) {
      ERR_clear_error();
      return absl::FailedPreconditionError(
          StrCat("TLS key ", key_path, ": not an unencrypted PEM private key"));
    }
  }
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        StrCat("TLS key ", key_path, " does not match the certificate in ", cert_path));
  }
  // What the TLS library will do with them, so gRPC does not refuse them
  // later (e.g. a key too small for OpenSSL's security level).
  {
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_server_method()),
                                                          &SSL_CTX_free);
    if (!ctx) return absl::InternalError("SSL_CTX_new failed" + OpensslReason());
    if (SSL_CTX_use_certificate(ctx.get(), leaf) != 1) {
      return absl::FailedPreconditionError(
          StrCat("TLS certificate ", cert_path, " is refused by OpenSSL", OpensslReason()));
    }
    for (size_t i = 1; i < chain->size(); ++i) {
      if (SSL_CTX_add1_chain_cert(ctx.get(), (*chain)[i].get()) != 1) {
        return absl::FailedPreconditionError(StrCat("TLS certificate ", cert_path, ": chain entry ",
                                                    i + 1, " is refused", OpensslReason()));
      }
    }
    if (SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1) {
      return absl::FailedPreconditionError(
          StrCat("TLS key ", key_path, " is refused by OpenSSL", OpensslReason()));
    }
  }

  // Client CAs: every file must hold at least one certificate.
  std::string roots;
  size_t root_count = 0;
  for (const auto& path : config_.server.client_ca) {
    auto certs = pki::ReadPemCertificates(path);
    if (!certs.ok()) {
      return absl::FailedPreconditionError(StrCat("client CA: ", certs.status().message()));
    }
    root_count += certs->size();
    roots += Pem(*certs);
  }
  if (roots.empty()) {
    return absl::FailedPreconditionError("no client CA configured: mTLS is mandatory");
  }

  // gRPC copies the strings; our PEM of the key is wiped when it goes.
  const std::string chain_pem = Pem(*chain);
  hsm::SecretString key_pem;
  {
    ossl::UniquePtr<BIO> out(BIO_new(BIO_s_secmem()));
    if (!out || PEM_write_bio_PrivateKey(out.get(), key.get(), nullptr, nullptr, 0, nullptr,
                                         nullptr) != 1) {
      return absl::InternalError("cannot encode the TLS key" + OpensslReason());
    }
    char* data = nullptr;
    const long len = BIO_get_mem_data(out.get(), &data);
    key_pem = hsm::SecretString(std::string_view(data, static_cast<size_t>(len)));
  }
  grpc_ssl_pem_key_cert_pair pair{key_pem.view().data(), chain_pem.c_str()};
  grpc_ssl_server_certificate_config* config =
      grpc_ssl_server_certificate_config_create(roots.c_str(), &pair, 1);
  if (config == nullptr) return absl::InternalError("gRPC refused the TLS certificate config");

  description->clear();
  description->push_back(
      StrCat("TLS server certificate ", pki::FormatName(X509_get_subject_name(leaf)), " (serial ",
             SerialHex(leaf), ", expires ", TimeText(X509_get0_notAfter(leaf)), ")"));
  description->push_back(StrCat("client CAs (", root_count, " certificate",
                                root_count == 1 ? "" : "s", " from ",
                                config_.server.client_ca.size(), " file",
                                config_.server.client_ca.size() == 1 ? "" : "s", ")"));
  return config;
}

grpc_ssl_certificate_config_reload_status ServerTls::Fetch(
    void* self, grpc_ssl_server_certificate_config** config) {
  // On the handshake path: one atomic exchange; gRPC takes ownership.
  grpc_ssl_server_certificate_config* next = static_cast<ServerTls*>(self)->next_.exchange(nullptr);
  if (next == nullptr) return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
  *config = next;
  return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
}

std::shared_ptr<grpc::ServerCredentials> ServerTls::Credentials() {
  return std::make_shared<FetcherServerCredentials>(&ServerTls::Fetch, this);
}

absl::StatusOr<std::vector<std::string>> ServerTls::Reload() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> description;
  auto config = Read(&description);
  if (!config.ok()) return config.status();
  if (auto* unused = next_.exchange(*config)) grpc_ssl_server_certificate_config_destroy(unused);
  description_ = description;
  return description;
}

std::vector<std::string> ServerTls::Describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  return description_;
}

absl::StatusOr<RunningServer> StartServer(const Config& config, CertificateAuthority& ca,
                                          std::vector<std::unique_ptr<grpc::Service>> extra) {
  RunningServer running;
  auto tls = ServerTls::Load(config);
  if (!tls.ok()) return tls.status();
  running.tls = std::move(*tls);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.server.listen, running.tls->Credentials(), &running.port);
  // What the largest legitimate request needs (server/limits.h): a field over
  // its limit gets the CA's INVALID_ARGUMENT naming it; a message larger than
  // this, gRPC's RESOURCE_EXHAUSTED ("Received message larger than max").
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxRequestMessageBytes));
  builder.experimental().SetInterceptorCreators(MakeInterceptors());
  const int threads = config.server.threads > 0
                          ? config.server.threads
                          : static_cast<int>(std::max<size_t>(2, pki::UsableCores()));
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, threads);
  running.services = MakeServices(ca);
  for (auto& s : extra) running.services.push_back(std::move(s));
  for (auto& s : running.services) builder.RegisterService(s.get());
  running.server = builder.BuildAndStart();
  if (!running.server || running.port == 0) {
    return absl::UnavailableError(StrCat("cannot listen on ", config.server.listen));
  }
  return running;
}

}  // namespace keywarden::service
