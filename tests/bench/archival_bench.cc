// Key archival: enrollments per second end to end, beside the crypto floor
// measured in the same run on the same SoftHSM2 token (issue 4, "Benchmark").
//
//   End to end: a real keywardend as a separate process (mTLS on loopback,
//   SoftHSM2, SQLite with synchronous=FULL, 3 KRAs from a software KRA CA
//   with a CRL, 2 per archival). The client is this process and does what
//   `keywarden request` does: it fetches and verifies the exchange
//   certificate once, then per enrollment builds the Windows-format CMC
//   request (pki::BuildArchivalRequest: PRIVATEKEYBLOB, 3DES, SHA-1, client
//   info, as the CLI's defaults) and calls Enrollment.Submit (template
//   ArchivalUser). Each client thread has its own channel (a TLS connection
//   of its own, like one CLI process), made once: the per-invocation TLS
//   handshake of a real CLI run is not in the figures. Key pairs are
//   generated before the timed loop (a pool, each key used once: the CA
//   archives a key for one owner once): RSA key generation is the
//   client's business and would swamp everything else.
//   Every response must be ISSUED with a certificate for the key sent; a
//   sample of the stored archives is opened with the KRA software keys
//   (in-process CMS_decrypt, and once with `openssl cms -decrypt`) and must
//   hold the very key that was sent. Figures are printed only for cells
//   whose every check passed; the exit status is non-zero otherwise.
//
//   Crypto floor: the token operations one archival needs, each timed in
//   this process with the real hsm/ code on the daemon's token: RSA-2048
//   decrypt with an exchange-type key (key transport of the submitted key),
//   SessionKey::Generate(kDes3) (+ its destruction), SessionKey::Encrypt of
//   the PKCS#8, 2 x SessionKey::WrapTo (RSA PKCS#1) to KRA keys, and 2 CA
//   signatures (certificate, CMC response). Their sum is the floor; the
//   whole sequence is also run on one thread per core.
//
// Usage: archival_bench [--seconds S] [--warmup S] [--concurrency 1,8]
//                       [--floor-seconds S] [--keys N] [--key-file PEM]
//                       [--format blob|pkcs8]
//                       [--sample K] [--no-floor] [--smoke]
//                       [--backend sqlite|postgresql] [--replicas N]
//                       [--pg CONNINFO] [--compare-backends]
//   --keys    size of the pre-generated requester key pool (default 3000;
//             a cell that runs out fails, except in --smoke, where each
//             cell has an equal share and stops when it is used up)
//   --key-file PEM file the pool's keys are read from (as many as it
//             holds) and written back to (when keys had to be generated):
//             repeated runs skip key generation. Every run is a new CA, so
//             a key used in an earlier run is new to it.
//   --format  what the request carries: blob (the CLI's default) or pkcs8
//   --sample  open every K-th stored archive (default 10; the first of each
//             client thread always)
//   --smoke   tiny durations and no warm-up, for ctest: proves the path
//             and the checks, figures meaningless
//   --backend the CA database: sqlite (default) or postgresql (a fresh
//             database on the cluster of --pg CONNINFO or KEYWARDEN_TEST_PG,
//             a role that may create databases; without one the run is
//             skipped with exit 77, or fails when KEYWARDEN_REQUIRE_PG=1)
//   --replicas N keywardend processes on the same configuration, database
//             and token (N > 1 needs postgresql); client thread t talks to
//             replica t mod N over a channel of its own
//   --compare-backends  run sqlite, postgresql x1 and postgresql x2 in
//             sequence in this process (same key pool size, same client
//             counts, the floor measured once) and print enroll/s side by
//             side with the floor
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "hsm/symmetric.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/cmc.h"
#include "pki/cmc_builder.h"
#include "pki/exchange_certificate.h"
#include "pki/private_key_blob.h"
#include "service/storage/store.h"
#include "tests/bench/bench_util.h"
#include "tests/service/daemon_harness.h"

namespace {

namespace hsm = keywarden::hsm;
namespace pki = keywarden::pki;
namespace v1 = keywarden::v1;
namespace ossl = keywarden::ossl;
namespace service = keywarden::service;
using keywarden::StrCat;
using keywarden::bench::CpuSeconds;
using keywarden::bench::Fixed;
using keywarden::bench::FlagValue;
using keywarden::bench::IntList;
using keywarden::bench::OwnConnection;
using keywarden::bench::Percentile;
using keywarden::bench::X509FromDer;
using keywarden::testing::DaemonHarness;
using keywarden::testing::SoftHsmFixture;
using keywarden::testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr char kKraEku[] = "1.3.6.1.4.1.311.21.6";
constexpr int kKras = 3;
constexpr int kPerArchival = 2;
constexpr char kTemplate[] = "ArchivalUser";
constexpr char kXchgLabel[] = "bench-xchg";

struct Options {
  double seconds = 10;
  double warmup = 1;
  double floor_seconds = 1.5;
  std::vector<int> concurrency = {1, 8};
  int keys = 3000;
  std::string key_file;  // --key-file: the pool's keys kept between runs
  int sample = 10;
  std::string format = "blob";
  bool floor = true;
  bool smoke = false;
  std::string backend = "sqlite";  // "sqlite" or "postgresql"
  int replicas = 1;                // keywardend processes on one database and token
  std::string pg;                  // --pg: the cluster's conninfo (else KEYWARDEN_TEST_PG)
  bool compare = false;            // --compare-backends
  bool backend_given = false, replicas_given = false;
};

// One end-to-end configuration: the CA database and how many keywardend
// processes share it (and the token).
struct Config {
  std::string backend;
  int replicas = 1;
  std::string Label() const {
    return backend == "postgresql" ? StrCat("postgresql x", replicas) : std::string("sqlite");
  }
};

// ---------------------------------------------------------------- helpers

std::string Message(const absl::Status& st) {
  return std::string(st.message());
}

// The RSA private exponent, to tell "the same key" from "the same public key".
ossl::UniquePtr<BIGNUM> PrivateExponent(EVP_PKEY* key) {
  BIGNUM* d = nullptr;
  if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_D, &d) != 1) return nullptr;
  return ossl::UniquePtr<BIGNUM>(d);
}

bool SamePrivateKey(EVP_PKEY* a, EVP_PKEY* b) {
  if (a == nullptr || b == nullptr || EVP_PKEY_eq(a, b) != 1) return false;
  auto da = PrivateExponent(a), db = PrivateExponent(b);
  return da && db && BN_cmp(da.get(), db.get()) == 0;
}

// ------------------------------------------------ KRAs from a software CA

struct SoftKra {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
  std::string cert_path, key_path, sha1;
};

struct KraSetup {
  ossl::UniquePtr<EVP_PKEY> ca_key;
  ossl::UniquePtr<X509> ca_cert;
  std::vector<SoftKra> kras;
  std::string toml;
};

std::string CrlPem(X509* ca, EVP_PKEY* ca_key) {
  ossl::UniquePtr<X509_CRL> crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca));
  ossl::UniquePtr<ASN1_STRING> now(ASN1_TIME_adj(nullptr, time(nullptr), 0, -60));
  ossl::UniquePtr<ASN1_STRING> next(ASN1_TIME_adj(nullptr, time(nullptr), 7, 0));
  X509_CRL_set1_lastUpdate(crl.get(), now.get());
  X509_CRL_set1_nextUpdate(crl.get(), next.get());
  X509_CRL_sign(crl.get(), ca_key, EVP_sha256());
  ossl::UniquePtr<BIO> b(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(b.get(), crl.get());
  char* data = nullptr;
  const long len = BIO_get_mem_data(b.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<KraSetup> MakeKras(const TempDir& dir) {
  KraSetup s;
  s.ca_key = keywarden::testing::SoftwareRsaKey(2048);
  s.ca_cert = keywarden::testing::SelfSignedCa(nullptr, s.ca_key.get(), "Bench KRA Issuing CA");
  if (!s.ca_key || !s.ca_cert) return absl::InternalError("KRA CA");
  keywarden::testing::WriteFile(dir.File("kra-ca.pem"), keywarden::testing::ToPem(s.ca_cert.get()));
  keywarden::testing::WriteFile(dir.File("kra-ca.crl"), CrlPem(s.ca_cert.get(), s.ca_key.get()));
  std::string list;
  for (int i = 0; i < kKras; ++i) {
    SoftKra k;
    k.key = keywarden::testing::SoftwareRsaKey(2048);
    k.cert.reset(X509_new());
    X509* x = k.cert.get();
    auto serial = pki::RandomSerial();
    auto name = pki::ParseName(StrCat("CN=bench kra", i, ",O=keywarden test"));
    if (!serial.ok() || !name.ok()) return absl::InternalError("KRA certificate fields");
    X509_set_version(x, X509_VERSION_3);
    X509_set_serialNumber(x, serial->get());
    X509_set_subject_name(x, name->get());
    X509_set_issuer_name(x, X509_get_subject_name(s.ca_cert.get()));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
    X509_set_pubkey(x, k.key.get());
    if (!pki::AddExtension(x, s.ca_cert.get(), NID_basic_constraints, "critical,CA:FALSE") ||
        !pki::AddExtension(x, s.ca_cert.get(), NID_key_usage, "keyEncipherment") ||
        !pki::AddExtension(x, s.ca_cert.get(), NID_ext_key_usage, kKraEku) ||
        !pki::AddExtension(x, s.ca_cert.get(), NID_subject_key_identifier, "hash") ||
        X509_sign(x, s.ca_key.get(), EVP_sha256()) <= 0) {
      return absl::InternalError("KRA certificate");
    }
    k.cert_path = dir.File(StrCat("kra", i, ".pem"));
    k.key_path = dir.File(StrCat("kra", i, ".key"));
    k.sha1 = pki::Sha1Thumbprint(x);
    keywarden::testing::WriteFile(k.cert_path, keywarden::testing::ToPem(x));
    keywarden::testing::WriteFile(k.key_path, keywarden::testing::PrivateKeyPem(k.key.get()));
    list += StrCat(list.empty() ? "\"" : ", \"", k.cert_path, "\"");
    s.kras.push_back(std::move(k));
  }
  s.toml = StrCat("\n[kra]\ncertificates = [", list, "]\ncount = ", kPerArchival, "\ntrust = [\"",
                  dir.File("kra-ca.pem"), "\"]\ncrls = [\"", dir.File("kra-ca.crl"), "\"]\n");
  return s;
}

// ----------------------------------------------------------- crypto floor

struct FloorOp {
  std::string name;
  int per_archival = 1;
  int64_t n = 0;
  double mean_us = 0;
};

// Runs `op` (returns false on failure) for about `seconds` after 3
// untimed calls; the mean time per call.
template <typename Op>
bool TimeOp(FloorOp* out, double seconds, Op op) {
  for (int i = 0; i < 3; ++i) {
    if (!op()) return false;
  }
  const auto start = Clock::now();
  const auto stop = start + std::chrono::duration<double>(seconds);
  int64_t n = 0;
  Clock::time_point now;
  do {
    if (!op()) return false;
    ++n;
    now = Clock::now();
  } while (now < stop || n < 5);
  out->n = n;
  out->mean_us =
      std::chrono::duration<double, std::micro>(now - start).count() / static_cast<double>(n);
  return true;
}

struct FloorContext {
  std::shared_ptr<hsm::Token> token;
  std::shared_ptr<hsm::CryptoContext> crypto;
  std::shared_ptr<hsm::TokenKey> xchg, ca;
  ossl::UniquePtr<EVP_PKEY> xchg_pkey, ca_pkey;  // through keywarden's provider
  ossl::UniquePtr<X509> ca_cert;
  EVP_PKEY* ca_public = nullptr;         // software, from the CA certificate
  std::vector<uint8_t> xchg_ciphertext;  // a 24-byte key, RSA PKCS#1 to the exchange key
  std::vector<uint8_t> xchg_plaintext;
  hsm::SecretBytes pkcs8;  // what is archived
  std::vector<EVP_PKEY*> kra_public;
  EVP_PKEY* kra0_private = nullptr;
  std::vector<uint8_t> tbs;  // what the CA signs (a certificate's worth of bytes)
};

bool TokenDecrypt(FloorContext& f, std::vector<uint8_t>* out) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(
      EVP_PKEY_CTX_new_from_pkey(f.crypto->libctx(), f.xchg_pkey.get(), hsm::kTokenKeyProperties));
  size_t len = 0;
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1 ||
      EVP_PKEY_decrypt(ctx.get(), nullptr, &len, f.xchg_ciphertext.data(),
                       f.xchg_ciphertext.size()) != 1) {
    return false;
  }
  out->resize(len);
  if (EVP_PKEY_decrypt(ctx.get(), out->data(), &len, f.xchg_ciphertext.data(),
                       f.xchg_ciphertext.size()) != 1) {
    return false;
  }
  out->resize(len);
  return true;
}

bool TokenSign(FloorContext& f, std::vector<uint8_t>* sig) {
  ossl::UniquePtr<EVP_MD_CTX> md(EVP_MD_CTX_new());
  size_t len = 0;
  if (!md ||
      EVP_DigestSignInit_ex(md.get(), nullptr, "SHA256", f.crypto->libctx(),
                            hsm::kTokenKeyProperties, f.ca_pkey.get(), nullptr) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &len, f.tbs.data(), f.tbs.size()) != 1) {
    return false;
  }
  sig->resize(len);
  if (EVP_DigestSign(md.get(), sig->data(), &len, f.tbs.data(), f.tbs.size()) != 1) return false;
  sig->resize(len);
  return true;
}

// The whole token sequence of one archival, in the daemon's order.
bool FloorSequence(FloorContext& f) {
  std::vector<uint8_t> plain, sig;
  if (!TokenDecrypt(f, &plain)) return false;
  {
    auto cek = hsm::SessionKey::Generate(f.token, hsm::SymmetricAlgorithm::kDes3);
    if (!cek.ok()) return false;
    auto ct = cek->Encrypt(f.pkcs8.span());
    if (!ct.ok()) return false;
    for (int i = 0; i < kPerArchival; ++i) {
      if (!cek->WrapTo(f.kra_public[static_cast<size_t>(i)], hsm::WrapMechanism::kRsaPkcs1).ok())
        return false;
    }
  }
  return TokenSign(f, &sig) && TokenSign(f, &sig);
}

// One check that the floor's operations do what the daemon needs: the
// decrypt returns the plaintext, the wrapped 3DES key (opened in software
// with KRA 0's key) decrypts the ciphertext to the PKCS#8, the signature
// verifies with the CA certificate's key.
bool CheckFloorOps(FloorContext& f, std::string* why) {
  std::vector<uint8_t> plain;
  if (!TokenDecrypt(f, &plain) || plain != f.xchg_plaintext) {
    *why = "the token decrypt did not return the plaintext";
    return false;
  }
  auto cek = hsm::SessionKey::Generate(f.token, hsm::SymmetricAlgorithm::kDes3);
  if (!cek.ok()) {
    *why = Message(cek.status());
    return false;
  }
  auto ct = cek->Encrypt(f.pkcs8.span());
  auto wrapped = cek->WrapTo(f.kra_public[0], hsm::WrapMechanism::kRsaPkcs1);
  if (!ct.ok() || !wrapped.ok()) {
    *why = "encrypt or wrap failed";
    return false;
  }
  ossl::UniquePtr<EVP_PKEY_CTX> dctx(EVP_PKEY_CTX_new_from_pkey(nullptr, f.kra0_private, nullptr));
  std::vector<uint8_t> key(static_cast<size_t>(EVP_PKEY_get_size(f.kra0_private)));
  size_t key_len = key.size();
  if (!dctx || EVP_PKEY_decrypt_init(dctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(dctx.get(), RSA_PKCS1_PADDING) != 1 ||
      EVP_PKEY_decrypt(dctx.get(), key.data(), &key_len, wrapped->data(), wrapped->size()) != 1 ||
      key_len != 24) {
    *why = "the wrapped 3DES key does not open with the KRA key";
    return false;
  }
  ossl::UniquePtr<EVP_CIPHER_CTX> c(EVP_CIPHER_CTX_new());
  std::vector<uint8_t> out(ct->data.size() + 16);
  int n1 = 0, n2 = 0;
  if (!c ||
      EVP_DecryptInit_ex(c.get(), EVP_des_ede3_cbc(), nullptr, key.data(), ct->iv.data()) != 1 ||
      EVP_DecryptUpdate(c.get(), out.data(), &n1, ct->data.data(),
                        static_cast<int>(ct->data.size())) != 1 ||
      EVP_DecryptFinal_ex(c.get(), out.data() + n1, &n2) != 1) {
    *why = "the 3DES ciphertext does not decrypt with the unwrapped key";
    return false;
  }
  out.resize(static_cast<size_t>(n1 + n2));
  if (out.size() != f.pkcs8.size() || std::memcmp(out.data(), f.pkcs8.data(), out.size()) != 0) {
    *why = "the 3DES ciphertext does not decrypt to the PKCS#8";
    return false;
  }
  std::vector<uint8_t> sig;
  ossl::UniquePtr<EVP_MD_CTX> v(EVP_MD_CTX_new());
  if (!TokenSign(f, &sig) ||
      EVP_DigestVerifyInit(v.get(), nullptr, EVP_sha256(), nullptr, f.ca_public) != 1 ||
      EVP_DigestVerify(v.get(), sig.data(), sig.size(), f.tbs.data(), f.tbs.size()) != 1) {
    *why = "the CA signature made on the token does not verify";
    return false;
  }
  ERR_clear_error();
  return true;
}

// ------------------------------------------------------------ end to end

struct Requester {
  ossl::UniquePtr<EVP_PKEY> key;
};

struct Issued {
  size_t key_index = 0;
  int64_t request_id = 0;
  std::string certificate;
  bool sampled = false;
};

struct Cell {
  std::string config;  // Config::Label()
  int concurrency = 0;
  double ops = 0;
  double p50_ms = 0, p99_ms = 0, build_ms = 0;
  double daemon_cpu_us = 0, client_cpu_us = 0;
  int64_t total = 0, sampled = 0;
  bool ok = false;
  std::string error;
};

struct Client {
  std::unique_ptr<v1::Enrollment::Stub> stub;
  ossl::UniquePtr<X509> exchange;  // this client's own copy, verified
};

// What `keywarden request` does before it builds anything: the exchange
// certificate and the CA chain from the daemon, the former verified.
absl::StatusOr<Client> NewClient(DaemonHarness& daemon, int n, const std::string& target = "") {
  Client c;
  c.stub = v1::Enrollment::NewStub(OwnConnection(daemon, "enrollee", n, target));
  v1::CertificateChain xchg, ca;
  {
    grpc::ClientContext ctx;
    grpc::Status st =
        c.stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &xchg);
    if (!st.ok()) return absl::UnavailableError("GetExchangeCertificate: " + st.error_message());
  }
  {
    grpc::ClientContext ctx;
    grpc::Status st = c.stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &ca);
    if (!st.ok()) return absl::UnavailableError("GetCaCertificate: " + st.error_message());
  }
  c.exchange = X509FromDer(xchg.certificate());
  std::vector<ossl::UniquePtr<X509>> chain;
  chain.push_back(X509FromDer(ca.certificate()));
  for (const std::string& der : ca.chain()) chain.push_back(X509FromDer(der));
  pki::ExchangeTrust trust;
  for (const auto& x : chain) {
    if (!x) return absl::InvalidArgumentError("a CA certificate from the daemon does not parse");
    trust.ca_chain.push_back(x.get());
  }
  if (auto st = pki::VerifyExchangeCertificate(c.exchange.get(), trust); !st.ok()) return st;
  return c;
}

pki::ArchivalRequestOptions RequestOptions(const Options& o) {
  pki::ArchivalRequestOptions build;
  build.template_name = kTemplate;
  build.digest = "SHA1";
  build.cipher = pki::ContentCipher::kDes3Cbc;
  build.key_format = o.format == "pkcs8" ? pki::ArchivedKeyFormat::kPkcs8
                                         : pki::ArchivedKeyFormat::kPrivateKeyBlob;
  build.client_info = pki::RequestClientInfo{9, "bench-host", "enrollee", "archival_bench"};
  return build;
}

// Opens stored archive `id` with each KRA it names (in-process CMS_decrypt
// with the software KRA keys) and checks the result is `expected`.
bool CheckArchive(service::Store& store, const KraSetup& kras, int64_t id, EVP_PKEY* expected,
                  std::string* why) {
  auto row = store.GetRequest(id);
  if (!row.ok()) {
    *why = StrCat("request ", id, ": ", Message(row.status()));
    return false;
  }
  if (row->disposition != service::Disposition::kIssued || !row->archived_key) {
    *why = StrCat("request ", id, " is not issued with an archived key");
    return false;
  }
  const service::ArchivedKey& a = *row->archived_key;
  if (a.scheme != "des3-rsa-pkcs1" || a.kra_sha1.size() != static_cast<size_t>(kPerArchival)) {
    *why = StrCat("request ", id, ": scheme ", a.scheme, " with ", a.kra_sha1.size(), " KRAs");
    return false;
  }
  for (const std::string& sha1 : a.kra_sha1) {
    const SoftKra* kra = nullptr;
    for (const auto& k : kras.kras) {
      if (k.sha1 == sha1) kra = &k;
    }
    if (kra == nullptr) {
      *why = StrCat("request ", id, " names KRA ", sha1, ", not one of ours");
      return false;
    }
    const unsigned char* p = a.envelope.data();
    ossl::UniquePtr<CMS_ContentInfo> cms(
        d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(a.envelope.size())));
    ossl::UniquePtr<BIO> out(BIO_new(BIO_s_secmem()));
    if (!cms || CMS_decrypt(cms.get(), kra->key.get(), kra->cert.get(), nullptr, out.get(),
                            CMS_BINARY) != 1) {
      ERR_clear_error();
      *why = StrCat("request ", id, ": the archive does not open with KRA ", sha1);
      return false;
    }
    char* data = nullptr;
    const long len = BIO_get_mem_data(out.get(), &data);
    const unsigned char* q = reinterpret_cast<const unsigned char*>(data);
    ossl::UniquePtr<EVP_PKEY> key(d2i_AutoPrivateKey(nullptr, &q, len));
    if (!SamePrivateKey(key.get(), expected)) {
      *why = StrCat("request ", id, ": KRA ", sha1, " opens the archive to a different key");
      return false;
    }
  }
  return true;
}

// The independent tool, once: `openssl cms -decrypt` with the first KRA
// the archive names.
bool OpensslOpens(service::Store& store, const KraSetup& kras, const TempDir& dir, int64_t id,
                  EVP_PKEY* expected, std::string* why) {
  auto row = store.GetRequest(id);
  if (!row.ok() || !row->archived_key) {
    *why = StrCat("request ", id, " has no archive");
    return false;
  }
  const SoftKra* kra = nullptr;
  for (const auto& k : kras.kras) {
    if (k.sha1 == row->archived_key->kra_sha1.front()) kra = &k;
  }
  if (kra == nullptr) return false;
  const std::string in = dir.File("archive.der"), out = dir.File("archive.pk8");
  keywarden::testing::WriteFile(in, row->archived_key->envelope);
  auto r = keywarden::testing::RunCommand(StrCat("openssl cms -decrypt -binary -inform DER -in ",
                                                 in, " -recip ", kra->cert_path, " -inkey ",
                                                 kra->key_path, " -out ", out));
  const std::vector<uint8_t> pk8 = keywarden::testing::ReadFile(out);
  const unsigned char* p = pk8.data();
  ossl::UniquePtr<EVP_PKEY> key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pk8.size())));
  if (r.exit_code != 0 || !SamePrivateKey(key.get(), expected)) {
    *why = StrCat("openssl cms -decrypt of request ", id, ": ", r.output);
    return false;
  }
  return true;
}

// The daemon's database as the checks read it: the SQLite file, or the
// PostgreSQL database the harness made (the daemon made its schema).
absl::StatusOr<std::unique_ptr<service::Store>> OpenCheckStore(const DaemonHarness& daemon) {
  if (!daemon.postgres()) return service::OpenSqliteStore(daemon.db_path());
  service::DatabaseOptions db;
  db.backend = "postgresql";
  db.connection = daemon.pg_conninfo();
  db.pool_size = 2;
  db.create_schema = false;
  return service::OpenStore(db);
}

// utime + stime of every keywardend process serving the CA.
double DaemonCpuSeconds(const std::vector<pid_t>& pids) {
  double sum = 0;
  for (pid_t pid : pids) sum += CpuSeconds(pid);
  return sum;
}

// `targets`: one host:port per keywardend; client thread t talks to
// targets[t % size] only (round robin, a channel of its own).
Cell RunCell(DaemonHarness& daemon, const std::vector<std::string>& targets,
             const std::vector<pid_t>& pids, const KraSetup& kras, const TempDir& dir,
             std::vector<Requester>& pool, std::atomic<size_t>& next_key, size_t key_limit,
             int concurrency, const Options& o, bool openssl_check) {
  Cell cell;
  cell.concurrency = concurrency;
  std::vector<Client> clients;
  for (int t = 0; t < concurrency; ++t) {
    auto c = NewClient(daemon, t, targets[static_cast<size_t>(t) % targets.size()]);
    if (!c.ok()) {
      cell.error = Message(c.status());
      return cell;
    }
    clients.push_back(std::move(*c));
  }
  const pki::ArchivalRequestOptions build = RequestOptions(o);
  const auto begin = Clock::now();
  const auto measure_from =
      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup));
  const auto stop = measure_from + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(o.seconds));
  std::vector<std::vector<double>> latencies(static_cast<size_t>(concurrency));
  std::vector<std::vector<Issued>> issued(static_cast<size_t>(concurrency));
  std::vector<double> build_ms(static_cast<size_t>(concurrency));
  std::vector<int64_t> builds(static_cast<size_t>(concurrency));
  std::atomic<bool> failed{false};
  std::mutex error_mu;
  const double client_before = CpuSeconds(), daemon_before = DaemonCpuSeconds(pids);
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      const size_t ti = static_cast<size_t>(t);
      Client& c = clients[ti];
      auto fail = [&](const std::string& why) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (cell.error.empty()) cell.error = why;
        failed = true;
      };
      for (size_t n = 0; !failed; ++n) {
        const auto start = Clock::now();
        if (start >= stop) break;
        // Each key once: the CA certifies and archives a key for one owner
        // once (a second archival of it is refused as a replay).
        const size_t key_index = next_key.fetch_add(1);
        if (key_index >= key_limit) {
          if (!o.smoke) {
            fail(StrCat("the key pool ran out after ", pool.size(),
                        " archivals (each key is archived once); run with a larger --keys"));
          }
          break;
        }
        auto request =
            pki::BuildArchivalRequest(pool[key_index].key.get(), c.exchange.get(), build);
        const auto built = Clock::now();
        if (!request.ok()) {
          fail("BuildArchivalRequest: " + Message(request.status()));
          return;
        }
        v1::SubmitRequest in;
        in.set_request(std::string(request->begin(), request->end()));
        in.set_template_name(kTemplate);
        v1::EnrollmentResult result;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        grpc::Status st = c.stub->Submit(&ctx, in, &result);
        const auto end = Clock::now();
        if (!st.ok()) {
          fail(StrCat("Submit: ", static_cast<int>(st.error_code()), " ", st.error_message()));
          return;
        }
        if (result.disposition() != v1::DISPOSITION_ISSUED || result.certificate().empty() ||
            result.cmc_response().empty()) {
          fail(StrCat("Submit: request ", result.request_id(), " disposition ",
                      static_cast<int>(result.disposition()), " (", result.message(), ")"));
          return;
        }
        Issued i;
        i.key_index = key_index;
        i.request_id = result.request_id();
        i.certificate = result.certificate();
        i.sampled = n == 0 || (o.sample > 0 && i.request_id % o.sample == 0);
        issued[ti].push_back(std::move(i));
        if (end >= measure_from && end <= stop) {
          latencies[ti].push_back(std::chrono::duration<double, std::milli>(end - built).count());
          build_ms[ti] += std::chrono::duration<double, std::milli>(built - start).count();
          ++builds[ti];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double client_cpu = CpuSeconds() - client_before;
  const double daemon_cpu = DaemonCpuSeconds(pids) - daemon_before;

  // Checks, after the clock stopped: every certificate is for the key sent;
  // the sampled archives hold that key.
  std::vector<double> all;
  double build_total = 0;
  int64_t build_count = 0;
  for (size_t t = 0; t < issued.size(); ++t) {
    cell.total += static_cast<int64_t>(issued[t].size());
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    build_total += build_ms[t];
    build_count += builds[t];
  }
  // Every keywardend that had client threads served some of them.
  if (!failed && concurrency >= static_cast<int>(targets.size())) {
    std::vector<int64_t> served(targets.size());
    for (size_t t = 0; t < issued.size(); ++t) {
      served[t % targets.size()] += static_cast<int64_t>(issued[t].size());
    }
    for (size_t r = 0; r < served.size(); ++r) {
      if (served[r] == 0) {
        failed = true;
        cell.error = StrCat("keywardend ", targets[r], " issued nothing");
      }
    }
  }
  if (!failed) {
    auto store = OpenCheckStore(daemon);
    if (!store.ok()) {
      failed = true;
      cell.error = Message(store.status());
    }
    bool openssl_done = !openssl_check;
    // Across replicas too: one request id and one certificate serial each.
    std::set<int64_t> ids;
    std::set<std::string> serials;
    for (size_t t = 0; t < issued.size() && !failed; ++t) {
      for (const Issued& i : issued[t]) {
        EVP_PKEY* key = pool[i.key_index].key.get();
        auto cert = X509FromDer(i.certificate);
        if (!cert || EVP_PKEY_eq(X509_get0_pubkey(cert.get()), key) != 1) {
          failed = true;
          cell.error =
              StrCat("request ", i.request_id, ": the certificate is not for the key sent");
          break;
        }
        const ASN1_INTEGER* serial = X509_get0_serialNumber(cert.get());
        const std::string serial_bytes(reinterpret_cast<const char*>(ASN1_STRING_get0_data(serial)),
                                       static_cast<size_t>(ASN1_STRING_length(serial)));
        if (!ids.insert(i.request_id).second || !serials.insert(serial_bytes).second) {
          failed = true;
          cell.error = StrCat("request ", i.request_id,
                              ": its request id or certificate serial was handed out twice");
          break;
        }
        if (!i.sampled) continue;
        if (!CheckArchive(**store, kras, i.request_id, key, &cell.error)) {
          failed = true;
          break;
        }
        ++cell.sampled;
        if (!openssl_done) {
          if (!OpensslOpens(**store, kras, dir, i.request_id, key, &cell.error)) {
            failed = true;
            break;
          }
          openssl_done = true;
        }
      }
    }
    ERR_clear_error();
  }
  if (cell.total > 0) {
    cell.daemon_cpu_us = daemon_cpu * 1e6 / static_cast<double>(cell.total);
    cell.client_cpu_us = client_cpu * 1e6 / static_cast<double>(cell.total);
  }
  cell.ops = static_cast<double>(all.size()) / o.seconds;
  cell.p50_ms = Percentile(all, 0.50);
  cell.p99_ms = Percentile(all, 0.99);
  cell.build_ms = build_count > 0 ? build_total / static_cast<double>(build_count) : 0;
  cell.ok = !failed && !all.empty();
  if (!failed && all.empty()) cell.error = "no enrollment completed inside the measured window";
  return cell;
}

// -------------------------------------------------------------- arguments

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) { return FlagValue(argc, argv, i, name); };
    if (const char* v = value("--seconds")) {
      o.seconds = std::atof(v);
    } else if (const char* w = value("--warmup")) {
      o.warmup = std::atof(w);
    } else if (const char* fs = value("--floor-seconds")) {
      o.floor_seconds = std::atof(fs);
    } else if (const char* c = value("--concurrency")) {
      o.concurrency = IntList(c);
    } else if (const char* k = value("--keys")) {
      o.keys = std::atoi(k);
    } else if (const char* kf = value("--key-file")) {
      o.key_file = kf;
    } else if (const char* s = value("--sample")) {
      o.sample = std::atoi(s);
    } else if (const char* f = value("--format")) {
      o.format = f;
    } else if (const char* b = value("--backend")) {
      o.backend = b;
      o.backend_given = true;
    } else if (const char* r = value("--replicas")) {
      char* end = nullptr;
      const long n = std::strtol(r, &end, 10);
      o.replicas = end != r && *end == '\0' && n >= 1 && n <= 16 ? static_cast<int>(n) : 0;
      o.replicas_given = true;
    } else if (const char* pg = value("--pg")) {
      o.pg = pg;
    } else if (a == "--compare-backends") {
      o.compare = true;
    } else if (a == "--no-floor") {
      o.floor = false;
    } else if (a == "--smoke") {
      o.smoke = true;
    } else {
      std::fprintf(
          stderr,
          "usage: archival_bench [--seconds S] [--warmup S] [--concurrency 1,8] "
          "[--floor-seconds S] [--keys N] [--key-file PEM] [--format blob|pkcs8] "
          "[--sample K] [--no-floor] [--smoke] [--backend sqlite|postgresql] [--replicas N] "
          "[--pg CONNINFO] [--compare-backends]\n");
      return false;
    }
  }
  if (o.smoke) {
    o.seconds = 0.5;
    o.warmup = 0;  // every enrollment counts: a cell has only its share of the keys
    o.floor_seconds = 0.1;
    o.keys = std::min(o.keys, 200);
    o.sample = 1;
  }
  const bool bad_level = std::any_of(o.concurrency.begin(), o.concurrency.end(),
                                     [](int c) { return c < 1 || c > 256; });
  if (o.seconds <= 0 || o.warmup < 0 || o.floor_seconds <= 0 || o.concurrency.empty() ||
      bad_level || o.keys < 1 || o.sample < 0 || (o.format != "blob" && o.format != "pkcs8")) {
    std::fprintf(stderr, "archival_bench: bad arguments\n");
    return false;
  }
  if (o.backend != "sqlite" && o.backend != "postgresql") {
    std::fprintf(stderr, "archival_bench: --backend must be sqlite or postgresql, not \"%s\"\n",
                 o.backend.c_str());
    return false;
  }
  if (o.replicas < 1) {
    std::fprintf(stderr, "archival_bench: --replicas takes a whole number from 1 to 16\n");
    return false;
  }
  if (o.replicas > 1 && o.backend != "postgresql") {
    std::fprintf(stderr,
                 "archival_bench: --replicas %d needs --backend postgresql: an SQLite CA "
                 "database belongs to one keywardend process, replicas share a PostgreSQL one\n",
                 o.replicas);
    return false;
  }
  if (o.compare && (o.backend_given || o.replicas_given)) {
    std::fprintf(stderr,
                 "archival_bench: --compare-backends runs sqlite, postgresql x1 and postgresql x2 "
                 "itself; drop --backend and --replicas\n");
    return false;
  }
  return true;
}

// The exit status ctest reads as "skipped" (SKIP_RETURN_CODE).
constexpr int kSkipped = 77;

int Fail(const std::string& what) {
  std::fprintf(stderr, "archival_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, o)) return 2;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Before any thread exists: the harness makes its databases on this cluster.
  if (!o.pg.empty()) setenv("KEYWARDEN_TEST_PG", o.pg.c_str(), 1);

  std::vector<Config> configs;
  if (o.compare) {
    configs = {{"sqlite", 1}, {"postgresql", 1}, {"postgresql", 2}};
  } else {
    configs = {{o.backend, o.replicas}};
  }
  const bool needs_pg = std::any_of(configs.begin(), configs.end(),
                                    [](const Config& c) { return c.backend == "postgresql"; });
  if (needs_pg && keywarden::testing::TestPgConninfo().empty()) {
    const char* how =
        "set KEYWARDEN_TEST_PG (or --pg) to the conninfo deploy/pg-cluster.sh start DIR prints";
    if (keywarden::testing::TestPgRequired()) {
      return Fail(
          StrCat("KEYWARDEN_REQUIRE_PG=1 but there is no PostgreSQL cluster for the "
                 "postgresql configuration: ",
                 how));
    }
    std::fprintf(stderr, "archival_bench: SKIPPED: no PostgreSQL cluster; %s\n", how);
    return kSkipped;
  }

  TempDir dir;
  auto kras = MakeKras(dir);
  if (!kras.ok()) return Fail(Message(kras.status()));

  // The requesters' key pairs, before any clock runs and before any daemon
  // starts. Every configuration is a CA of its own with an empty database,
  // so each uses the same pool from its first key.
  std::vector<Requester> pool(static_cast<size_t>(o.keys));
  // --key-file: keys read from it first (a key is used once per CA, and
  // every run is a new CA), the rest generated and the whole pool written
  // back, so that repeated runs do not wait minutes for RSA key generation.
  size_t from_file = 0;
  if (!o.key_file.empty()) {
    if (FILE* in = std::fopen(o.key_file.c_str(), "r")) {
      while (from_file < pool.size()) {
        EVP_PKEY* k = PEM_read_PrivateKey(in, nullptr, nullptr, nullptr);
        if (k == nullptr) break;
        pool[from_file++].key.reset(k);
      }
      ERR_clear_error();
      std::fclose(in);
    }
  }
  {
    std::vector<std::thread> gen;
    std::atomic<size_t> next{0};
    for (int t = 0; t < cores; ++t) {
      gen.emplace_back([&] {
        for (size_t i = next++; i < pool.size(); i = next++) {
          if (i >= from_file) pool[i].key.reset(EVP_RSA_gen(2048));
        }
      });
    }
    for (auto& t : gen) t.join();
    for (const auto& r : pool) {
      if (!r.key) return Fail("RSA key generation failed");
    }
    if (!o.key_file.empty() && from_file < pool.size()) {
      FILE* out = std::fopen(o.key_file.c_str(), "w");
      bool written = out != nullptr;
      for (const auto& r : pool) {
        written = written &&
                  PEM_write_PrivateKey(out, r.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
      }
      if (out != nullptr) written = std::fclose(out) == 0 && written;
      if (!written) return Fail("cannot write the key file " + o.key_file);
    }
  }

  FloorContext f;
  std::vector<FloorOp> floor_ops;
  double floor_us = 0, floor_cores_ops = 0;
  // In-process software work of the daemon's archival path (not token
  // operations): where the time beyond the floor goes.
  std::vector<FloorOp> soft_ops;
  bool floor_ok = true;
  std::string floor_error;
  std::vector<Cell> cells;
  bool all_ok = true;

  for (size_t ci = 0; ci < configs.size(); ++ci) {
    const Config& config = configs[ci];
    const bool measure_floor = ci == 0 && o.floor;
    // The daemon, with the floor's exchange-type key made on its token first
    // (the first configuration measures the floor).
    std::shared_ptr<hsm::Token> token;
    std::shared_ptr<hsm::TokenKey> xchg;
    DaemonHarness::Options options;
    options.extra_toml = kras->toml;
    options.backend = config.backend;
    if (measure_floor)
      options.before_launch = [&](DaemonHarness& h) -> absl::Status {
        auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(SoftHsmFixture::kCaToken));
        if (!uri.ok()) return uri.status();
        hsm::OpenOptions open;
        open.default_module = SoftHsmFixture::module_path();
        open.pin = hsm::PinSource::File(h.tokens().PinFile(SoftHsmFixture::kCaToken));
        open.token.max_sessions = static_cast<size_t>(2 * std::max(cores, 2));
        auto t = hsm::OpenToken(*uri, open);
        if (!t.ok()) return t.status();
        token = *t;
        hsm::KeySpec spec;  // as ExchangeKeys makes them: decrypt only
        spec.label = kXchgLabel;
        spec.usage.sign = false;
        spec.usage.decrypt = true;
        auto key = hsm::GenerateKeyPair(token, spec);
        if (!key.ok()) return key.status();
        xchg = *key;
        return absl::OkStatus();
      };
    auto started = DaemonHarness::Start(options);
    if (!started.ok()) return Fail(StrCat(config.Label(), ": ", Message(started.status())));
    std::unique_ptr<DaemonHarness> daemon = std::move(*started);
    // Replicas: more keywardend processes on the same configuration, database
    // and token; client thread t talks to targets[t % replicas].
    std::vector<std::string> targets = {daemon->target()};
    std::vector<pid_t> pids = {daemon->pid()};
    for (int r = 1; r < config.replicas; ++r) {
      auto n = daemon->StartReplica();
      if (!n.ok()) return Fail(StrCat(config.Label(), ": ", Message(n.status())));
      targets.push_back(daemon->replica_target(*n));
      pids.push_back(daemon->replica_pid(*n));
    }
    for (size_t r = 0; r < targets.size(); ++r) {
      std::fprintf(stderr, "archival_bench: %s: keywardend pid %d on %s\n", config.Label().c_str(),
                   static_cast<int>(pids[r]), targets[r].c_str());
    }

    // The KRAs must all be valid, archival enabled.
    {
      auto admin = v1::Administration::NewStub(daemon->Channel("admin"));
      grpc::ClientContext ctx;
      v1::KeyRecoveryAgents agents;
      grpc::Status st =
          admin->ListKeyRecoveryAgents(&ctx, v1::ListKeyRecoveryAgentsRequest(), &agents);
      if (!st.ok()) return Fail("ListKeyRecoveryAgents: " + st.error_message());
      int valid = 0;
      for (const auto& a : agents.agents()) valid += a.state() == "valid" ? 1 : 0;
      if (valid != kKras || !agents.archival_enabled() ||
          agents.per_archival() != static_cast<uint32_t>(kPerArchival)) {
        return Fail(StrCat(valid, " of ", agents.agents_size(), " KRAs valid, archival ",
                           agents.archival_enabled() ? "enabled" : "disabled"));
      }
    }

    // ------------------------------------------------------------ the floor
    if (measure_floor) {
      f.token = token;
      f.xchg = xchg;
      auto crypto = hsm::CryptoContext::Create();
      if (!crypto.ok()) return Fail(Message(crypto.status()));
      f.crypto = *crypto;
      auto ca = hsm::FindPrivateKey(token, "ca-signing");
      if (!ca.ok()) return Fail(Message(ca.status()));
      f.ca = *ca;
      auto xp = f.crypto->Load(f.xchg);
      auto cp = f.crypto->Load(f.ca);
      if (!xp.ok() || !cp.ok()) return Fail("loading the token keys through the provider");
      f.xchg_pkey = std::move(*xp);
      f.ca_pkey = std::move(*cp);
      auto ca_certs = pki::ReadPemCertificates(daemon->ca_cert_path());
      if (!ca_certs.ok()) return Fail(Message(ca_certs.status()));
      f.ca_cert = std::move(ca_certs->front());
      f.ca_public = X509_get0_pubkey(f.ca_cert.get());
      // A 3DES key's worth of plaintext, encrypted in software to the exchange key.
      f.xchg_plaintext.resize(24);
      RAND_bytes(f.xchg_plaintext.data(), 24);
      {
        ossl::UniquePtr<EVP_PKEY_CTX> e(
            EVP_PKEY_CTX_new_from_pkey(nullptr, f.xchg->public_key.get(), nullptr));
        size_t len = 0;
        if (!e || EVP_PKEY_encrypt_init(e.get()) != 1 ||
            EVP_PKEY_CTX_set_rsa_padding(e.get(), RSA_PKCS1_PADDING) != 1 ||
            EVP_PKEY_encrypt(e.get(), nullptr, &len, f.xchg_plaintext.data(), 24) != 1) {
          return Fail("encrypting to the exchange-type key");
        }
        f.xchg_ciphertext.resize(len);
        if (EVP_PKEY_encrypt(e.get(), f.xchg_ciphertext.data(), &len, f.xchg_plaintext.data(),
                             24) != 1) {
          return Fail("encrypting to the exchange-type key");
        }
        f.xchg_ciphertext.resize(len);
      }
      auto pkcs8 = pki::ToPkcs8(pool[0].key.get());
      if (!pkcs8.ok()) return Fail(Message(pkcs8.status()));
      f.pkcs8 = std::move(*pkcs8);
      for (const auto& k : kras->kras) f.kra_public.push_back(X509_get0_pubkey(k.cert.get()));
      f.kra0_private = kras->kras[0].key.get();
      // A certificate's worth of bytes to sign (the issued ones are ~1 KB).
      f.tbs.assign(1000, 0x5a);
      if (!CheckFloorOps(f, &floor_error)) return Fail("floor check: " + floor_error);

      std::vector<uint8_t> scratch;
      FloorOp dec{"RSA-2048 decrypt, exchange-type token key (EVP_PKEY_decrypt PKCS#1)", 1};
      floor_ok =
          floor_ok && TimeOp(&dec, o.floor_seconds, [&] { return TokenDecrypt(f, &scratch); });
      floor_ops.push_back(dec);
      FloorOp gen{"SessionKey::Generate(kDes3) + its C_DestroyObject", 1};
      floor_ok = floor_ok && TimeOp(&gen, o.floor_seconds, [&] {
                   return hsm::SessionKey::Generate(token, hsm::SymmetricAlgorithm::kDes3).ok();
                 });
      floor_ops.push_back(gen);
      {
        auto cek = hsm::SessionKey::Generate(token, hsm::SymmetricAlgorithm::kDes3);
        if (!cek.ok()) return Fail(Message(cek.status()));
        FloorOp enc{
            StrCat("SessionKey::Encrypt ", f.pkcs8.size(), "-byte PKCS#8 (IV + DES3-CBC-PAD)"), 1};
        floor_ok = floor_ok &&
                   TimeOp(&enc, o.floor_seconds, [&] { return cek->Encrypt(f.pkcs8.span()).ok(); });
        floor_ops.push_back(enc);
        FloorOp wrap{"SessionKey::WrapTo KRA RSA-2048 (CKM_RSA_PKCS)", kPerArchival};
        size_t which = 0;
        floor_ok = floor_ok && TimeOp(&wrap, o.floor_seconds, [&] {
                     return cek
                         ->WrapTo(f.kra_public[which++ % f.kra_public.size()],
                                  hsm::WrapMechanism::kRsaPkcs1)
                         .ok();
                   });
        floor_ops.push_back(wrap);
      }
      FloorOp sign{"CA signature on token (EVP_DigestSign SHA-256, RSA PKCS#1)", 2};
      floor_ok = floor_ok && TimeOp(&sign, o.floor_seconds, [&] { return TokenSign(f, &scratch); });
      floor_ops.push_back(sign);
      for (const auto& op : floor_ops) floor_us += op.mean_us * op.per_archival;

      // The whole sequence on one thread per core.
      {
        std::atomic<int64_t> done{0};
        std::atomic<bool> bad{false};
        const auto start = Clock::now();
        const auto stop = start + std::chrono::duration<double>(std::max(2 * o.floor_seconds, 0.2));
        std::vector<std::thread> ts;
        for (int t = 0; t < cores; ++t) {
          ts.emplace_back([&] {
            while (Clock::now() < stop && !bad) {
              if (!FloorSequence(f)) bad = true;
              ++done;
            }
          });
        }
        for (auto& t : ts) t.join();
        floor_ok = floor_ok && !bad;
        floor_cores_ops = static_cast<double>(done.load()) /
                          std::chrono::duration<double>(Clock::now() - start).count();
      }

      // Software work in the daemon's path, for the profile (1 thread).
      auto blob = pki::SerializePrivateKeyBlob(pool[0].key.get());
      if (!blob.ok()) return Fail(Message(blob.status()));
      FloorOp parse_blob{"ParsePrivateKeyPlaintext(PRIVATEKEYBLOB)", 1};
      floor_ok = floor_ok && TimeOp(&parse_blob, o.floor_seconds / 2, [&] {
                   return pki::ParsePrivateKeyPlaintext(blob->span(), nullptr, nullptr).ok();
                 });
      FloorOp parse_p8{"ParsePrivateKeyPlaintext(PKCS#8)", 1};
      floor_ok = floor_ok && TimeOp(&parse_p8, o.floor_seconds / 2, [&] {
                   return pki::ParsePrivateKeyPlaintext(f.pkcs8.span(), nullptr, nullptr).ok();
                 });
      auto parsed = pki::ParsePrivateKeyPlaintext(blob->span(), nullptr, nullptr);
      if (!parsed.ok()) return Fail(Message(parsed.status()));
      FloorOp check{"CheckKeyPairMatches (encrypt/decrypt round trip)", 1};
      floor_ok = floor_ok && TimeOp(&check, o.floor_seconds / 2, [&] {
                   return pki::CheckKeyPairMatches(parsed->get(), pool[0].key.get()).ok();
                 });
      FloorOp to_p8{"ToPkcs8", 1};
      floor_ok = floor_ok && TimeOp(&to_p8, o.floor_seconds / 2,
                                    [&] { return pki::ToPkcs8(parsed->get()).ok(); });
      auto xchg_certs = NewClient(*daemon, 1000);
      if (!xchg_certs.ok()) return Fail(Message(xchg_certs.status()));
      auto request = pki::BuildArchivalRequest(pool[0].key.get(), xchg_certs->exchange.get(),
                                               RequestOptions(o));
      if (!request.ok()) return Fail(Message(request.status()));
      FloorOp parse_cmc{StrCat("ParseCmcRequest (", request->size(), "-byte request)"), 1};
      floor_ok = floor_ok && TimeOp(&parse_cmc, o.floor_seconds / 2,
                                    [&] { return pki::ParseCmcRequest(*request).ok(); });
      FloorOp client_build{"client: BuildArchivalRequest (not daemon work)", 1};
      floor_ok = floor_ok && TimeOp(&client_build, o.floor_seconds / 2, [&] {
                   return pki::BuildArchivalRequest(pool[0].key.get(), xchg_certs->exchange.get(),
                                                    RequestOptions(o))
                       .ok();
                 });
      soft_ops = {parse_blob, parse_p8, check, to_p8, parse_cmc, client_build};
      if (!floor_ok) floor_error = "a floor operation failed";
      all_ok = all_ok && floor_ok;
      // The floor's token handles go before this daemon's token directory.
      f = FloorContext();
    }

    // ----------------------------------------------------------- end to end
    std::atomic<size_t> next_key{0};
    bool openssl_check = true;  // once per configuration
    for (size_t cell_index = 0; cell_index < o.concurrency.size(); ++cell_index) {
      const int c = o.concurrency[cell_index];
      // A smoke run stops a cell when the pool runs out rather than failing:
      // each cell then gets its share, so that a fast first cell cannot
      // leave the next one without keys.
      const size_t key_limit =
          o.smoke ? pool.size() * (cell_index + 1) / o.concurrency.size() : pool.size();
      Cell cell = RunCell(*daemon, targets, pids, *kras, dir, pool, next_key, key_limit, c, o,
                          openssl_check);
      cell.config = config.Label();
      openssl_check = openssl_check && !cell.ok;
      all_ok = all_ok && cell.ok;
      if (!cell.ok) {
        std::fprintf(stderr, "archival_bench: %s conc %d: %s\n", cell.config.c_str(), c,
                     cell.error.c_str());
      }
      cells.push_back(cell);
    }
    for (int r = config.replicas - 1; r >= 1; --r) {
      if (auto st = daemon->StopReplica(r); !st.ok()) {
        std::fprintf(stderr, "archival_bench: %s: %s\n", config.Label().c_str(),
                     Message(st).c_str());
        all_ok = false;
      }
    }
    auto stopped = daemon->Stop();
    if (!stopped.ok()) {
      std::fprintf(stderr, "archival_bench: %s: %s\n", config.Label().c_str(),
                   Message(stopped).c_str());
      all_ok = false;
    }
    token.reset();
    xchg.reset();
    daemon.reset();
  }

  // ---------------------------------------------------------------- report
  std::string labels;
  for (const Config& c : configs) labels += (labels.empty() ? "" : ", ") + c.Label();
  std::printf(
      "\nkeywarden archival_bench%s: %d cores (shared machine: other jobs may run); SoftHSM2 "
      "token \"%s\"; keywardend separate processes (mTLS on loopback); configurations: %s "
      "(sqlite = one keywardend, SQLite synchronous=FULL; postgresql xN = N keywardend replicas "
      "sharing one PostgreSQL database and one token directory, pool_size 8 each, the cluster "
      "on this machine over a Unix socket, fsync on); 3 KRAs, 2 per archival, des3-rsa-pkcs1; "
      "requests carry a %s, SHA-1, 3DES\n",
      o.smoke ? " (SMOKE RUN: figures meaningless)" : "", cores, SoftHsmFixture::kCaToken,
      labels.c_str(), o.format == "pkcs8" ? "PKCS#8" : "PRIVATEKEYBLOB");
  if (o.floor) {
    std::printf(
        "\nCrypto floor: token operations of one archival, this process, real hsm/ code, "
        "same token, 1 thread, %.1f s each\n",
        o.floor_seconds);
    std::printf("%-72s %7s %10s %4s %12s\n", "operation", "n", "mean us", "x", "us/archival");
    for (const auto& op : floor_ops) {
      std::printf("%-72s %7lld %10s %4d %12s\n", op.name.c_str(), static_cast<long long>(op.n),
                  Fixed(op.mean_us, 1).c_str(), op.per_archival,
                  Fixed(op.mean_us * op.per_archival, 1).c_str());
    }
    std::printf("%-72s %7s %10s %4s %12s\n", "floor (sum)", "", "", "", Fixed(floor_us, 1).c_str());
    std::printf(
        "floor, 1 thread: %.1f archivals/s max; whole sequence on %d threads (one per "
        "core): %.1f archivals/s\n",
        floor_us > 0 ? 1e6 / floor_us : 0, cores, floor_cores_ops);
    std::printf(
        "\nSoftware work on the daemon's archival path (not token operations, not in the "
        "floor), this process, 1 thread\n");
    for (const auto& op : soft_ops) {
      std::printf("%-72s %7lld %10s\n", op.name.c_str(), static_cast<long long>(op.n),
                  Fixed(op.mean_us, 1).c_str());
    }
  }
  const double floor1 = floor_us > 0 ? 1e6 / floor_us : 0;
  std::printf(
      "\nEnd to end: enrollments/s = issued archival enrollments completing in %.1f s (after %.1f "
      "s warm-up), each = build the request (client) + Submit; client thread t talks to replica "
      "t mod N over a channel of its own; p50/p99 = Submit round trip; build = mean client "
      "build time. %d pre-generated key pairs (not timed; the same pool for every "
      "configuration, each a CA of its own). daemon us / client us = CPU per archival of all "
      "keywardend processes / of the client (this process); the PostgreSQL server's CPU is in "
      "neither. Every response checked ISSUED with a certificate for the key sent; 'opened' = "
      "stored archives read back from the configuration's database and opened with both of "
      "their KRAs' keys (in-process CMS_decrypt; the first of each configuration also with "
      "`openssl cms -decrypt`) to the very key sent.\n",
      o.seconds, o.warmup, o.keys);
  std::printf("%-14s %5s %10s %8s %8s %8s %10s %10s %9s %11s %s\n", "config", "conc", "enroll/s",
              "p50 ms", "p99 ms", "build ms", "daemon us", "client us", "/floor1", "/floor@cores",
              "checked");
  for (const Cell& c : cells) {
    if (!c.ok) {
      std::printf("%-14s %5d FAILED: %s (no figures)\n", c.config.c_str(), c.concurrency,
                  c.error.c_str());
      continue;
    }
    std::printf(
        "%-14s %5d %10s %8s %8s %8s %10s %10s %9s %11s %lld issued, %lld opened\n",
        c.config.c_str(), c.concurrency, Fixed(c.ops, 1).c_str(), Fixed(c.p50_ms, 2).c_str(),
        Fixed(c.p99_ms, 2).c_str(), Fixed(c.build_ms, 2).c_str(), Fixed(c.daemon_cpu_us, 0).c_str(),
        Fixed(c.client_cpu_us, 0).c_str(), floor1 > 0 ? Fixed(c.ops / floor1, 3).c_str() : "-",
        floor_cores_ops > 0 ? Fixed(c.ops / floor_cores_ops, 3).c_str() : "-",
        static_cast<long long>(c.total), static_cast<long long>(c.sampled));
  }
  if (o.floor) {
    std::printf(
        "/floor1 = enroll/s over the 1-thread floor (%.1f/s): the share of the token's serial "
        "capacity reached. At conc > 1 the daemon overlaps token operations, so compare with "
        "/floor@cores (the whole token sequence on %d threads: %.1f/s); the client's own work "
        "(build ms, client us) runs on the same %d cores.\n",
        floor1, cores, floor_cores_ops, cores);
    // CPU per archival moves far less than throughput on a shared machine.
    for (const Cell& c : cells) {
      if (!c.ok || c.daemon_cpu_us <= 0) continue;
      std::printf(
          "%s conc %d: keywardend CPU %.1f ms/archival = %.2f x the floor's %.1f ms of token "
          "time; CPU-bound ceiling on %d cores: %.0f/s for the daemon alone, %.0f/s with this "
          "client's %.1f ms too\n",
          c.config.c_str(), c.concurrency, c.daemon_cpu_us / 1000, c.daemon_cpu_us / floor_us,
          floor_us / 1000, cores, cores * 1e6 / c.daemon_cpu_us,
          cores * 1e6 / (c.daemon_cpu_us + c.client_cpu_us), c.client_cpu_us / 1000);
    }
  }
  if (configs.size() > 1) {
    // Side by side: enroll/s by configuration (columns) and client threads.
    std::printf("\nenroll/s side by side (same key pool, same client counts%s)\n%5s",
                o.floor ? ", beside the token floor" : "", "conc");
    for (const Config& c : configs) std::printf(" %14s", c.Label().c_str());
    if (o.floor) std::printf(" %14s %14s", "floor 1 thread", "floor @cores");
    std::printf("\n");
    for (int conc : o.concurrency) {
      std::printf("%5d", conc);
      for (const Config& config : configs) {
        const Cell* found = nullptr;
        for (const Cell& c : cells) {
          if (c.config == config.Label() && c.concurrency == conc) found = &c;
        }
        std::printf(" %14s",
                    found == nullptr || !found->ok ? "FAILED" : Fixed(found->ops, 1).c_str());
      }
      if (o.floor) {
        std::printf(" %14s %14s", Fixed(floor1, 1).c_str(), Fixed(floor_cores_ops, 1).c_str());
      }
      std::printf("\n");
    }
  }
  std::fflush(stdout);
  if (!all_ok) {
    std::fprintf(stderr, "archival_bench: FAILED%s%s\n", floor_error.empty() ? "" : ": ",
                 floor_error.c_str());
  }
  cells.clear();
  pool.clear();
  return all_ok ? 0 : 1;
}
