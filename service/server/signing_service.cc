#include "service/server/signing_service.h"

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "keywarden/v1/signing.grpc.pb.h"
#include "pki/certificate.h"
#include "service/server/limits.h"
#include "service/server/rpc.h"
#include "service/server/workers.h"

namespace keywarden::service {
namespace {

using grpc::ServerContextBase;
using grpc::Status;
using signing::Algorithm;

constexpr char kSignDigest[] = "/keywarden.v1.Signing/SignDigest";
constexpr char kSignDigests[] = "/keywarden.v1.Signing/SignDigests";
constexpr char kSignData[] = "/keywarden.v1.Signing/SignData";
constexpr char kGetSigningKey[] = "/keywarden.v1.Signing/GetSigningKey";
constexpr char kListSigningKeys[] = "/keywarden.v1.Signing/ListSigningKeys";
constexpr char kIssueCertificate[] = "/keywarden.v1.Signing/IssueCertificate";

std::optional<Algorithm> FromProto(v1::SignatureAlgorithm a) {
  switch (a) {
    case v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256:
      return Algorithm::kRsaPkcs1Sha256;
    case v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA384:
      return Algorithm::kRsaPkcs1Sha384;
    case v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA512:
      return Algorithm::kRsaPkcs1Sha512;
    case v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256:
      return Algorithm::kRsaPssSha256;
    case v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA384:
      return Algorithm::kRsaPssSha384;
    case v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA512:
      return Algorithm::kRsaPssSha512;
    case v1::SIGNATURE_ALGORITHM_ECDSA_SHA256:
      return Algorithm::kEcdsaSha256;
    case v1::SIGNATURE_ALGORITHM_ECDSA_SHA384:
      return Algorithm::kEcdsaSha384;
    case v1::SIGNATURE_ALGORITHM_ECDSA_SHA512:
      return Algorithm::kEcdsaSha512;
    default:
      return std::nullopt;
  }
}

v1::SignatureAlgorithm ToProto(Algorithm a) {
  switch (a) {
    case Algorithm::kRsaPkcs1Sha256:
      return v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256;
    case Algorithm::kRsaPkcs1Sha384:
      return v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA384;
    case Algorithm::kRsaPkcs1Sha512:
      return v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA512;
    case Algorithm::kRsaPssSha256:
      return v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256;
    case Algorithm::kRsaPssSha384:
      return v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA384;
    case Algorithm::kRsaPssSha512:
      return v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA512;
    case Algorithm::kEcdsaSha256:
      return v1::SIGNATURE_ALGORITHM_ECDSA_SHA256;
    case Algorithm::kEcdsaSha384:
      return v1::SIGNATURE_ALGORITHM_ECDSA_SHA384;
    case Algorithm::kEcdsaSha512:
      return v1::SIGNATURE_ALGORITHM_ECDSA_SHA512;
  }
  return v1::SIGNATURE_ALGORITHM_UNSPECIFIED;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Der(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

void Fill(const signing::SigningKey& key, v1::SigningKeyInfo* out) {
  out->set_alias(key.alias);
  out->set_key_type(key.type() == hsm::KeyType::kEc ? "ec" : "rsa");
  out->set_bits(static_cast<int32_t>(key.bits()));
  out->set_public_key(Der(key.public_key_der));
  if (key.certificate) out->set_certificate(Der(pki::CertificateDer(key.certificate.get())));
  for (const auto& c : key.chain) out->add_chain(Der(pki::CertificateDer(c.get())));
  for (Algorithm a : key.algorithms) out->add_algorithms(ToProto(a));
  for (const auto& t : key.templates) out->add_templates(t);
}

// The handlers, independent of the gRPC API flavour.
class Handlers {
 public:
  Handlers(CertificateAuthority& ca, signing::DelegatedSigner& signer) : ca_(ca), signer_(signer) {}

  Status SignDigest(const ServerContextBase& context, const v1::SignDigestRequest& in,
                    v1::SignResponse* out) {
    auto caller = Authorize(ca_, context, kSignDigest, in);
    if (!caller.ok()) return ToGrpc(caller.status());
    std::optional<int> salt;
    if (in.has_pss_salt_length()) salt = in.pss_salt_length();
    return ToGrpc(signer_.SignDigest(caller->principal, in.alias(), FromProto(in.algorithm()),
                                     Bytes(in.digest()), salt, out->mutable_signature()));
  }

  Status SignDigests(const ServerContextBase& context, const v1::SignDigestsRequest& in,
                     v1::SignDigestsResponse* out) {
    auto caller = Authorize(ca_, context, kSignDigests);
    if (!caller.ok()) return ToGrpc(caller.status());
    // Too many digests is the signer's refusal, audited; below the count
    // every field is bounded before anything reads it.
    if (static_cast<size_t>(in.digests_size()) <= kMaxSignDigests) {
      if (absl::Status st = CheckRequestLimits(in); !st.ok()) return ToGrpc(st);
    }
    std::optional<int> salt;
    if (in.has_pss_salt_length()) salt = in.pss_salt_length();
    std::vector<std::span<const uint8_t>> digests;
    digests.reserve(static_cast<size_t>(in.digests_size()));
    for (const std::string& d : in.digests()) digests.push_back(Bytes(d));
    std::vector<std::string> signatures;
    absl::Status st = signer_.SignDigests(caller->principal, in.alias(), FromProto(in.algorithm()),
                                          digests, salt, kMaxSignDigests, &signatures);
    if (!st.ok()) return ToGrpc(st);
    for (std::string& sig : signatures) out->add_signatures(std::move(sig));
    return Status::OK;
  }

  Status SignData(const ServerContextBase& context, const v1::SignDataRequest& in,
                  v1::SignResponse* out) {
    auto caller = Authorize(ca_, context, kSignData, in);
    if (!caller.ok()) return ToGrpc(caller.status());
    std::optional<int> salt;
    if (in.has_pss_salt_length()) salt = in.pss_salt_length();
    return ToGrpc(signer_.SignData(caller->principal, in.alias(), FromProto(in.algorithm()),
                                   Bytes(in.data()), salt, out->mutable_signature()));
  }

  Status GetSigningKey(const ServerContextBase& context, const v1::GetSigningKeyRequest& in,
                       v1::SigningKeyInfo* out) {
    auto caller = Authorize(ca_, context, kGetSigningKey, in);
    if (!caller.ok()) return ToGrpc(caller.status());
    auto key = signer_.KeyFor(caller->principal, in.alias(), "GetSigningKey");
    if (!key.ok()) return ToGrpc(key.status());
    Fill(**key, out);
    return Status::OK;
  }

  Status ListSigningKeys(const ServerContextBase& context, const v1::ListSigningKeysRequest&,
                         v1::ListSigningKeysResponse* out) {
    auto caller = Authorize(ca_, context, kListSigningKeys);
    if (!caller.ok()) return ToGrpc(caller.status());
    for (const auto& key : signer_.keys()) {
      if (key->PrincipalIndex(caller->principal) >= 0) Fill(*key, out->add_keys());
    }
    return Status::OK;
  }

  Status IssueCertificate(const ServerContextBase& context, const v1::IssueCertificateRequest& in,
                          v1::IssuedCertificate* out) {
    auto caller = Authorize(ca_, context, kIssueCertificate, in);
    if (!caller.ok()) return ToGrpc(caller.status());
    auto issued = signer_.IssueCertificate(caller->principal, in.alias(), in.template_name(),
                                           Bytes(in.csr()), in.subject());
    if (!issued.ok()) return ToGrpc(issued.status());
    out->set_certificate(Der(pki::CertificateDer(issued->certificate.get())));
    for (const auto& c : issued->chain) out->add_chain(Der(c));
    out->set_serial(issued->serial);
    return Status::OK;
  }

 private:
  CertificateAuthority& ca_;
  signing::DelegatedSigner& signer_;
};

// Callback API: every call is handed to the workers.
class SigningService final : public v1::Signing::CallbackService {
 public:
  SigningService(CertificateAuthority& ca, signing::DelegatedSigner& signer, int threads)
      : h_(ca, signer), workers_(std::make_unique<Workers<UnaryCall<Handlers>>>(threads)) {}

  grpc::ServerUnaryReactor* SignDigest(grpc::CallbackServerContext* context,
                                       const v1::SignDigestRequest* in,
                                       v1::SignResponse* out) override {
    return PostUnary<&Handlers::SignDigest>(*workers_, h_, context, in, out);
  }
  grpc::ServerUnaryReactor* SignDigests(grpc::CallbackServerContext* context,
                                        const v1::SignDigestsRequest* in,
                                        v1::SignDigestsResponse* out) override {
    return PostUnary<&Handlers::SignDigests>(*workers_, h_, context, in, out);
  }
  grpc::ServerUnaryReactor* SignData(grpc::CallbackServerContext* context,
                                     const v1::SignDataRequest* in,
                                     v1::SignResponse* out) override {
    return PostUnary<&Handlers::SignData>(*workers_, h_, context, in, out);
  }
  grpc::ServerUnaryReactor* GetSigningKey(grpc::CallbackServerContext* context,
                                          const v1::GetSigningKeyRequest* in,
                                          v1::SigningKeyInfo* out) override {
    return PostUnary<&Handlers::GetSigningKey>(*workers_, h_, context, in, out);
  }
  grpc::ServerUnaryReactor* ListSigningKeys(grpc::CallbackServerContext* context,
                                            const v1::ListSigningKeysRequest* in,
                                            v1::ListSigningKeysResponse* out) override {
    return PostUnary<&Handlers::ListSigningKeys>(*workers_, h_, context, in, out);
  }
  grpc::ServerUnaryReactor* IssueCertificate(grpc::CallbackServerContext* context,
                                             const v1::IssueCertificateRequest* in,
                                             v1::IssuedCertificate* out) override {
    return PostUnary<&Handlers::IssueCertificate>(*workers_, h_, context, in, out);
  }

 private:
  Handlers h_;
  std::unique_ptr<Workers<UnaryCall<Handlers>>> workers_;  // last: stopped first
};

}  // namespace

std::unique_ptr<grpc::Service> MakeSigningService(CertificateAuthority& ca,
                                                  signing::DelegatedSigner& signer) {
  return std::make_unique<SigningService>(ca, signer, ServiceWorkerCount(ca.config()));
}

}  // namespace keywarden::service
