// keywarden request: enrollment with key archival, like `certreq -new`
// with PrivateKeyArchive = TRUE followed by -submit and -accept. The CA
// exchange certificate is fetched (or read) and verified, the key pair
// generated (or read), the CMC request built in the Windows layout
// (pki/cmc_builder.h), submitted, and the certificate and key saved.
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/ossl.h"
#include "hsm/pin.h"
#include "hsm/secret.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/cmc_builder.h"
#include "pki/cmc_response.h"
#include "pki/exchange_certificate.h"
#include "pki/files.h"
#include "pki/pkcs10.h"

namespace keywarden::cli {
namespace {

constexpr char kPasswordEnv[] = "KEYWARDEN_PFX_PASSWORD";

struct RequestOptions {
  std::string subject;
  std::string template_name;
  int key_bits = 2048;
  std::string key_file;
  std::string exchange_cert_file;
  std::string ca_cert_file;
  std::string out;
  bool force = false;
  std::string cert_out;
  std::string response_out;
  std::string key_out;
  std::string pfx;
  std::string password;
  std::string digest = "sha1";
  std::string cipher = "3des";
  std::string key_format = "blob";
  bool no_client_info = false;
};

struct Pkcs12Deleter {
  void operator()(PKCS12* p) const { PKCS12_free(p); }
};
struct X509StackDeleter {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};

absl::StatusOr<ossl::UniquePtr<X509>> CertificateFromDer(const std::string& der,
                                                         const std::string& what) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    ERR_clear_error();
    return absl::DataLossError(StrCat(what, " does not parse as a certificate"));
  }
  return cert;
}

// One certificate, PEM or DER.
absl::StatusOr<ossl::UniquePtr<X509>> ReadCertificate(const std::string& path,
                                                      const std::string& option) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(), StrCat(option, ": ", bytes.status().message()));
  }
  const std::vector<uint8_t> der = pki::PemToDer(*bytes);
  auto cert = CertificateFromDer(std::string(der.begin(), der.end()), StrCat(option, " ", path));
  if (!cert.ok()) return absl::InvalidArgumentError(cert.status().message());
  return cert;
}

// The private key in a PEM file; encrypted PEM is refused (no prompt).
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> ReadPrivateKey(const std::string& path) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(), StrCat("--key: ", bytes.status().message()));
  }
  hsm::SecretBytes pem(*bytes);
  OPENSSL_cleanse(bytes->data(), bytes->size());
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  auto no_passphrase = [](char*, int, int, void*) -> int { return -1; };
  ossl::UniquePtr<EVP_PKEY> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  ERR_clear_error();
  if (!key) {
    return absl::InvalidArgumentError(StrCat("--key ", path,
                                             ": no unencrypted PEM private key in it (decrypt one "
                                             "with `openssl pkey -in IN -out OUT`)"));
  }
  if (EVP_PKEY_is_a(key.get(), "RSA") != 1) {
    return absl::InvalidArgumentError(StrCat("--key ", path, ": a ",
                                             EVP_PKEY_get0_type_name(key.get()),
                                             " key; key archival needs an RSA key"));
  }
  return key;
}

absl::StatusOr<hsm::SecretBytes> PrivateKeyPem(EVP_PKEY* key) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    ERR_clear_error();
    return absl::InternalError("encoding the private key as PEM failed");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return hsm::SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
}

// PKCS#12 of the key and, when issued, its certificate and chain.
absl::StatusOr<hsm::SecretBytes> MakePfx(EVP_PKEY* key, X509* cert,
                                         const std::vector<ossl::UniquePtr<X509>>& chain,
                                         const hsm::SecretString& password,
                                         const std::string& name) {
  std::unique_ptr<STACK_OF(X509), X509StackDeleter> ca(sk_X509_new_null());
  for (const auto& c : chain) {
    X509_up_ref(c.get());
    sk_X509_push(ca.get(), c.get());
  }
  const std::string pass(password.view());
  std::unique_ptr<PKCS12, Pkcs12Deleter> p12(
      PKCS12_create(pass.c_str(), name.c_str(), key, cert, ca.get(), 0, 0, 0, 0, 0));
  OPENSSL_cleanse(const_cast<char*>(pass.data()), pass.size());
  if (!p12) {
    ERR_clear_error();
    return absl::InternalError("building the PKCS#12 (PFX) failed");
  }
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12.get(), &der);
  if (len <= 0) return absl::InternalError("encoding the PKCS#12 (PFX) failed");
  hsm::SecretBytes out(std::span<const uint8_t>(der, static_cast<size_t>(len)));
  OPENSSL_clear_free(der, static_cast<size_t>(len));
  return out;
}

// -p, $KEYWARDEN_PFX_PASSWORD, or a prompt with confirmation.
absl::StatusOr<hsm::SecretString> PfxPassword(const RequestOptions& o) {
  if (!o.password.empty()) return hsm::SecretString(o.password);
  if (const char* env = std::getenv(kPasswordEnv); env != nullptr && *env != '\0') {
    return hsm::SecretString(env);
  }
  auto first = hsm::PinSource::Prompt("PFX password: ").Read();
  if (!first.ok()) {
    return absl::InvalidArgumentError(StrCat("PFX password: ", first.status().message(),
                                             " (give -p or set $", kPasswordEnv, ")"));
  }
  auto again = hsm::PinSource::Prompt("PFX password again: ").Read();
  if (!again.ok())
    return absl::InvalidArgumentError(StrCat("PFX password: ", again.status().message()));
  if (first->view() != again->view()) {
    return absl::InvalidArgumentError("PFX password: the two entries differ");
  }
  return std::move(*first);
}

std::optional<pki::RequestClientInfo> ClientInfo() {
  pki::RequestClientInfo info;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return std::nullopt;
  info.machine = host;
  const passwd* pw = getpwuid(getuid());
  info.user = pw != nullptr && pw->pw_name != nullptr ? pw->pw_name : std::to_string(getuid());
  info.process = "keywarden";
  return info;
}

bool IsDottedOid(const std::string& s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  for (char c : s) {
    if (c != '.' && (c < '0' || c > '9')) return false;
  }
  return s.find('.') != std::string::npos;
}

// Outcomes after which the CA certainly holds nothing for this request.
bool DefinitelyRefused(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kUnimplemented:
      return true;
    default:
      return false;
  }
}

absl::Status CheckUsage(const RequestOptions& o) {
  if (o.key_bits % 16 != 0) {
    return absl::InvalidArgumentError(
        StrCat("--key-bits ", o.key_bits, ": must be a multiple of 16 (PRIVATEKEYBLOB)"));
  }
  if (!o.out.empty() && (!o.cert_out.empty() || !o.pfx.empty() || !o.response_out.empty())) {
    return absl::InvalidArgumentError(
        "--out writes the request without sending it: --cert-out, --pfx and --response need "
        "the CA's answer (submit the file later with `keywarden submit`)");
  }
  if (o.force && o.out.empty()) {
    return absl::InvalidArgumentError("--force only applies to --out");
  }
  if (o.key_file.empty() && o.key_out.empty() && (o.pfx.empty() || !o.out.empty())) {
    return absl::InvalidArgumentError(
        "the new private key would be lost: give --key-out FILE (and/or --pfx FILE when "
        "submitting), or use an existing key with --key FILE");
  }
  if (!o.password.empty() && o.pfx.empty()) {
    return absl::InvalidArgumentError("-p/--password is the --pfx password: give --pfx FILE");
  }
  // Every output is refused early if it exists: nothing reaches the CA first.
  const std::vector<std::pair<std::string, pki::Overwrite>> outputs = {
      {o.out, o.force ? pki::Overwrite::kReplace : pki::Overwrite::kRefuse},
      {o.cert_out, pki::Overwrite::kRefuse},
      {o.response_out, pki::Overwrite::kRefuse},
      {o.key_out, pki::Overwrite::kRefuse},
      {o.pfx, pki::Overwrite::kRefuse}};
  for (const auto& [path, mode] : outputs) {
    if (path.empty()) continue;
    if (auto st = pki::CheckWritable(path, mode); !st.ok()) return st;
  }
  return absl::OkStatus();
}

nlohmann::json ExchangeJson(X509* exchange) {
  auto summary = SummarizeCertificate([&] {
    const std::vector<uint8_t> der = pki::CertificateDer(exchange);
    return std::string(der.begin(), der.end());
  }());
  return summary.ok() ? ToJson(*summary) : nlohmann::json(nullptr);
}

// Removes files this run created, when the request came to nothing.
void RemoveCreated(const std::vector<std::string>& paths) {
  for (const std::string& p : paths) std::remove(p.c_str());
}

absl::StatusOr<Reply> RunRequest(Client* client, const RequestOptions& o,
                                 const std::optional<hsm::SecretString>& password) {
  // 1. The CA chain, the trust anchors and the exchange certificate.
  std::vector<ossl::UniquePtr<X509>> anchors;
  if (!o.ca_cert_file.empty()) {
    auto certs = pki::ReadPemCertificates(o.ca_cert_file);
    if (!certs.ok())
      return absl::InvalidArgumentError(StrCat("--ca-cert: ", certs.status().message()));
    anchors = std::move(*certs);
  }
  ossl::UniquePtr<X509> exchange;
  if (!o.exchange_cert_file.empty()) {
    auto cert = ReadCertificate(o.exchange_cert_file, "--exchange-cert");
    if (!cert.ok()) return cert.status();
    exchange = std::move(*cert);
  } else {
    v1::CertificateChain reply;
    auto ctx = client->Context();
    if (auto st = client->Check(client->enrollment().GetExchangeCertificate(
            ctx.get(), v1::GetExchangeCertificateRequest(), &reply));
        !st.ok()) {
      return st;
    }
    auto cert =
        CertificateFromDer(reply.certificate(), "the CA exchange certificate from the daemon");
    if (!cert.ok()) return cert.status();
    exchange = std::move(*cert);
  }
  std::vector<ossl::UniquePtr<X509>> ca_chain;
  if (client != nullptr) {
    v1::CertificateChain reply;
    auto ctx = client->Context();
    if (auto st = client->Check(client->enrollment().GetCaCertificate(
            ctx.get(), v1::GetCaCertificateRequest(), &reply));
        !st.ok()) {
      return st;
    }
    auto ca = CertificateFromDer(reply.certificate(), "the CA certificate from the daemon");
    if (!ca.ok()) return ca.status();
    ca_chain.push_back(std::move(*ca));
    for (const std::string& der : reply.chain()) {
      auto c = CertificateFromDer(der, "a CA chain certificate from the daemon");
      if (!c.ok()) return c.status();
      ca_chain.push_back(std::move(*c));
    }
  } else {
    // Offline: the CA certificate is the one in --ca-cert that issued the
    // exchange certificate; the rest is its chain.
    for (auto& c : anchors) ca_chain.emplace_back(X509_dup(c.get()));
    std::stable_partition(ca_chain.begin(), ca_chain.end(), [&](const ossl::UniquePtr<X509>& c) {
      return X509_check_issued(c.get(), exchange.get()) == X509_V_OK;
    });
  }
  pki::ExchangeTrust trust;
  for (const auto& c : ca_chain) trust.ca_chain.push_back(c.get());
  for (const auto& c : anchors) trust.trust_anchors.push_back(c.get());
  if (auto st = pki::VerifyExchangeCertificate(exchange.get(), trust); !st.ok()) return st;

  // 2. The key pair.
  ossl::UniquePtr<EVP_PKEY> key;
  if (!o.key_file.empty()) {
    auto k = ReadPrivateKey(o.key_file);
    if (!k.ok()) return k.status();
    key = std::move(*k);
  } else {
    key.reset(EVP_RSA_gen(static_cast<unsigned>(o.key_bits)));
    if (!key) {
      ERR_clear_error();
      return absl::InternalError(StrCat("generating a ", o.key_bits, "-bit RSA key failed"));
    }
  }

  // 3. The request.
  pki::ArchivalRequestOptions build;
  ossl::UniquePtr<X509_NAME> subject;
  if (!o.subject.empty()) {
    auto name = pki::ParseName(o.subject);
    if (!name.ok())
      return absl::InvalidArgumentError(StrCat("--subject: ", name.status().message()));
    subject = std::move(*name);
    build.subject = subject.get();
  }
  (IsDottedOid(o.template_name) ? build.template_oid : build.template_name) = o.template_name;
  build.digest = o.digest;
  build.cipher =
      o.cipher == "aes256" ? pki::ContentCipher::kAes256Cbc : pki::ContentCipher::kDes3Cbc;
  build.key_format = o.key_format == "pkcs8" ? pki::ArchivedKeyFormat::kPkcs8
                                             : pki::ArchivedKeyFormat::kPrivateKeyBlob;
  if (!o.no_client_info) build.client_info = ClientInfo();
  auto request = pki::BuildArchivalRequest(key.get(), exchange.get(), build);
  if (!request.ok()) return request.status();

  Reply reply;
  reply.json["exchange_certificate"] = ExchangeJson(exchange.get());
  const std::string exchange_sha1 = pki::Sha1Thumbprint(exchange.get());

  // 4. Keys are on disk before anything is sent: a CA that archived the key
  // but whose answer was lost must not leave the requester without it.
  std::vector<std::string> created;
  if (!o.key_out.empty()) {
    auto pem = PrivateKeyPem(key.get());
    if (!pem.ok()) return pem.status();
    if (auto st = pki::WriteFileAtomically(o.key_out, pem->span(), pki::Overwrite::kRefuse, 0600);
        !st.ok()) {
      return st;
    }
    created.push_back(o.key_out);
    reply.json["key_file"] = o.key_out;
  }

  if (!o.out.empty()) {
    if (auto st = pki::WriteFileAtomically(
            o.out, *request, o.force ? pki::Overwrite::kReplace : pki::Overwrite::kRefuse, 0644);
        !st.ok()) {
      RemoveCreated(created);
      return st;
    }
    reply.json["request_file"] = o.out;
    reply.json["request_bytes"] = request->size();
    std::vector<std::pair<std::string, std::string>> rows = {
        {"Request", StrCat(o.out, " (CMC with archived key, ", request->size(), " bytes, DER)")},
        {"Exchange cert", StrCat("SHA-1 ", exchange_sha1, " (verified)")}};
    if (!o.key_out.empty()) rows.push_back({"Private key", StrCat(o.key_out, " (PEM, 0600)")});
    rows.push_back({"Next", StrCat("keywarden submit ", o.out, " --template ", o.template_name)});
    reply.text = KeyValues(rows);
    return reply;
  }

  std::vector<ossl::UniquePtr<X509>> no_chain;
  if (!o.pfx.empty()) {
    auto pfx = MakePfx(key.get(), nullptr, no_chain, *password, "keywarden request");
    if (!pfx.ok()) {
      RemoveCreated(created);
      return pfx.status();
    }
    if (auto st = pki::WriteFileAtomically(o.pfx, pfx->span(), pki::Overwrite::kRefuse, 0600);
        !st.ok()) {
      RemoveCreated(created);
      return st;
    }
    created.push_back(o.pfx);
  }

  // 5. Submit.
  v1::SubmitRequest in;
  in.set_request(std::string(request->begin(), request->end()));
  in.set_template_name(o.template_name);
  v1::EnrollmentResult result;
  auto ctx = client->Context();
  if (auto st = client->Check(client->enrollment().Submit(ctx.get(), in, &result)); !st.ok()) {
    if (DefinitelyRefused(st)) {
      RemoveCreated(created);
      return st;
    }
    std::string kept = created.empty()
                           ? std::string()
                           : StrCat("; the private key is kept in ", StrJoin(created, " and "));
    return absl::Status(st.code(), StrCat(st.message(), kept));
  }
  if (result.disposition() != v1::DISPOSITION_ISSUED &&
      result.disposition() != v1::DISPOSITION_PENDING) {
    RemoveCreated(created);
    reply.json.erase("key_file");
  }

  // 6. The CMC Full PKI Response (certreq -accept): signed by the CA whose
  // certificate the daemon serves and, when issued, carrying the
  // certificate; checked before it is saved.
  if (!o.response_out.empty() && (result.disposition() == v1::DISPOSITION_ISSUED ||
                                  result.disposition() == v1::DISPOSITION_PENDING)) {
    const std::string& response = result.cmc_response();
    const std::span<const uint8_t> der(reinterpret_cast<const uint8_t*>(response.data()),
                                       response.size());
    const std::string& issued = result.certificate();
    absl::Status check = response.empty() ? absl::DataLossError("the CA sent no CMC response")
                         : result.disposition() == v1::DISPOSITION_ISSUED
                             ? pki::VerifyCmcResponseCarries(
                                   der, ca_chain.front().get(),
                                   {reinterpret_cast<const uint8_t*>(issued.data()), issued.size()})
                             : pki::VerifyCmcResponse(der, ca_chain.front().get());
    if (check.ok()) {
      check = pki::WriteFileAtomically(o.response_out, der, pki::Overwrite::kRefuse, 0644);
    }
    if (!check.ok()) {
      return absl::Status(
          check.code(),
          StrCat("request ", result.request_id(), ": ", check.message(), "; nothing written to ",
                 o.response_out, " (the certificate can be fetched with `keywarden retrieve ",
                 result.request_id(), "`)"));
    }
    reply.json["response_file"] = o.response_out;
  }

  // 7. The PFX with the certificate, then the report (which writes --cert-out).
  if (!o.pfx.empty() && result.disposition() == v1::DISPOSITION_ISSUED) {
    auto cert = CertificateFromDer(result.certificate(), "the issued certificate");
    if (!cert.ok()) return cert.status();
    std::vector<ossl::UniquePtr<X509>> chain;
    for (const std::string& der : result.chain()) {
      auto c = CertificateFromDer(der, "a chain certificate");
      if (!c.ok()) return c.status();
      chain.push_back(std::move(*c));
    }
    auto pfx = MakePfx(key.get(), cert->get(), chain, *password,
                       StrCat("keywarden request ", result.request_id()));
    if (!pfx.ok()) return pfx.status();
    // Replaces the key-only PFX written before submitting.
    if (auto st = pki::WriteFileAtomically(o.pfx, pfx->span(), pki::Overwrite::kReplace, 0600);
        !st.ok()) {
      return absl::Status(st.code(), StrCat("request ", result.request_id(),
                                            " was issued but the PFX was not updated: ",
                                            st.message(), "; the key alone is in ", o.pfx));
    }
  }
  auto enrollment = EnrollmentReply(result, o.cert_out);
  if (!enrollment.ok()) return enrollment.status();
  nlohmann::json json = std::move(enrollment->json);
  for (auto& [k, v] : reply.json.items()) json[k] = v;
  std::vector<std::pair<std::string, std::string>> rows;
  if (json.contains("key_file")) rows.push_back({"Private key", StrCat(o.key_out, " (PEM, 0600)")});
  if (!o.pfx.empty() && (result.disposition() == v1::DISPOSITION_ISSUED ||
                         result.disposition() == v1::DISPOSITION_PENDING)) {
    json["pfx_file"] = o.pfx;
    rows.push_back({"PFX", result.disposition() == v1::DISPOSITION_ISSUED
                               ? StrCat(o.pfx, " (key, certificate and chain)")
                               : StrCat(o.pfx, " (key only until the certificate is issued)")});
  }
  if (json.contains("response_file")) {
    rows.push_back({"CMC response",
                    StrCat(o.response_out, " (DER, CA signature verified with the CA certificate",
                           result.disposition() == v1::DISPOSITION_ISSUED
                               ? ", carries the certificate)"
                               : "; pending: no certificate yet)")});
  }
  rows.push_back({"Exchange cert", StrCat("SHA-1 ", exchange_sha1, " (verified)")});
  reply.json = std::move(json);
  reply.text = enrollment->text + KeyValues(rows);
  reply.exit_code = enrollment->exit_code;
  return reply;
}

}  // namespace

void RegisterRequestCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                             Action& action) {
  CLI::App* cmd = app.add_subcommand(
      "request",
      "Enroll with key archival: new key, CMC request with the key encrypted to the "
      "CA exchange certificate, submit, save certificate and key");
  cmd->footer(
      "Like certreq -new (PrivateKeyArchive = TRUE), -submit and -accept. The CA exchange\n"
      "certificate is fetched from keywardend (or read from --exchange-cert) and must be signed\n"
      "by the CA key, chain to the CA certificate (and to --ca-cert when given), be valid, carry\n"
      "EKU 1.3.6.1.4.1.311.21.5 and keyEncipherment, and be RSA; otherwise nothing is sent.\n"
      "The private key is written (--key-out, --pfx) before the request is sent and removed\n"
      "again if the CA refuses it. --out writes the request (DER) without sending it; with\n"
      "--exchange-cert and --ca-cert that needs no daemon at all. --response saves the CA's\n"
      "CMC Full PKI Response (certreq -accept) once its CA signature verifies with the CA\n"
      "certificate and it carries the issued certificate (check it: openssl cms -verify\n"
      "-inform DER -noverify -in FILE).\n"
      "The PFX password comes from -p, $KEYWARDEN_PFX_PASSWORD, or a prompt (asked twice).\n"
      "Exit codes as for submit: 0 issued or pending, 3 refused (e.g. 0x8009400a: the CA has\n"
      "no key recovery agent), 2 bad usage, 1 failed.");
  auto o = std::make_shared<RequestOptions>();
  cmd->add_option("--template", o->template_name, "Certificate template name or OID")->required();
  cmd->add_option("--subject", o->subject,
                  "Subject, e.g. \"CN=alice,O=Example\" (default: empty, the CA uses your name)");
  cmd->add_option("--key-bits", o->key_bits, "RSA key size for a new key (default 2048)")
      ->check(CLI::Range(1024, 16384));
  cmd->add_option("--key", o->key_file, "Use this existing RSA private key (unencrypted PEM)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--exchange-cert", o->exchange_cert_file,
                  "Use this CA exchange certificate (PEM or DER) instead of fetching it");
  cmd->add_option("--ca-cert", o->ca_cert_file,
                  "Trust anchor(s) (PEM): the CA certificate or its root; the exchange "
                  "certificate must chain to one");
  cmd->add_option("--out", o->out, "Write the request (DER) here and do not send it");
  cmd->add_flag("--force", o->force, "Let --out replace an existing file");
  cmd->add_option("--cert-out", o->cert_out, "Write the issued certificate here (PEM)");
  cmd->add_option("--response", o->response_out,
                  "Write the CA's CMC Full PKI Response here (DER, certreq -accept's input), after "
                  "checking its signature against the CA certificate and that it carries the "
                  "issued certificate");
  cmd->add_option("--key-out", o->key_out, "Write the private key here (PEM, mode 0600)");
  cmd->add_option("--pfx", o->pfx, "Write key, certificate and chain here as PKCS#12 (mode 0600)");
  cmd->add_option("-p,--password", o->password,
                  "PFX password (visible to other users in ps; prefer $KEYWARDEN_PFX_PASSWORD "
                  "or the prompt)");
  cmd->add_option("--digest", o->digest, "sha1 (Windows, default), sha256, sha384, sha512")
      ->check(CLI::IsMember({"sha1", "sha256", "sha384", "sha512"}, CLI::ignore_case));
  cmd->add_option("--cipher", o->cipher, "Key encryption: 3des (Windows, default) or aes256")
      ->check(CLI::IsMember({"3des", "aes256"}, CLI::ignore_case));
  cmd->add_option("--key-format", o->key_format,
                  "Archived key plaintext: blob (CAPI PRIVATEKEYBLOB, default) or pkcs8")
      ->check(CLI::IsMember({"blob", "pkcs8"}, CLI::ignore_case));
  cmd->add_flag("--no-client-info", o->no_client_info,
                "Leave out the host, user and program names (1.3.6.1.4.1.311.21.20)");
  cmd->callback([&out, &conn, &action, o] {
    action = [&out, &conn, o]() -> int {
      if (auto st = CheckUsage(*o); !st.ok()) return out.Fail(st);
      std::optional<hsm::SecretString> password;
      if (!o->pfx.empty()) {
        auto p = PfxPassword(*o);
        if (!p.ok()) return out.Fail(p.status());
        password = std::move(*p);
      }
      const bool offline =
          !o->out.empty() && !o->exchange_cert_file.empty() && !o->ca_cert_file.empty();
      if (offline) {
        auto reply = RunRequest(nullptr, *o, password);
        if (!reply.ok()) return out.Fail(reply.status());
        out.Result(reply->json, reply->text);
        return reply->exit_code;
      }
      return WithClient(out, conn,
                        [o, &password](Client& c) { return RunRequest(&c, *o, password); })();
    };
  });
}

}  // namespace keywarden::cli
