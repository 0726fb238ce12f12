// Reading keywarden's error detail (RpcStatus + ErrorDetail in the
// grpc-status-details-bin trailer) and making requests in tests.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "hsm/ossl.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "keywarden/v1/keywarden.pb.h"
#include "pki/certificate.h"

namespace keywarden::testing {

// The ErrorDetail a failed call carries (empty message if none).
inline v1::ErrorDetail DetailOf(const grpc::Status& status) {
  v1::RpcStatus rpc;
  v1::ErrorDetail detail;
  if (rpc.ParseFromString(status.error_details()) && rpc.details_size() > 0) {
    rpc.details(0).UnpackTo(&detail);
  }
  return detail;
}

// The audit records of `event` (of the newest 10000), read through the
// Audit RPC on `auditor`'s channel, as a client sees them (store_peek.h's
// HarnessAuditEvents reads the store itself). A failed read fails the test.
inline std::vector<v1::AuditRecord> AuditRecordsViaRpc(
    const std::shared_ptr<grpc::Channel>& auditor, const std::string& event) {
  auto stub = v1::Audit::NewStub(auditor);
  grpc::ClientContext ctx;
  v1::ReadAuditRequest in;
  in.set_limit(10000);
  v1::ReadAuditResponse out;
  const grpc::Status st = stub->ReadAudit(&ctx, in, &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  std::vector<v1::AuditRecord> found;
  for (const auto& r : out.records()) {
    if (r.event() == event) found.push_back(r);
  }
  return found;
}

// The HRESULT a failed call's ErrorDetail carries (0 if none).
inline uint32_t HResultOf(const grpc::Status& status) {
  return DetailOf(status).hresult();
}

// PEM text of `der` under `label` ("CERTIFICATE", "X509 CRL").
inline std::string DerToPem(const std::string& der, const char* label) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio(bio.get(), label, "", reinterpret_cast<const unsigned char*>(der.data()),
                static_cast<long>(der.size()));
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// A PKCS#10 for `subject` (RFC 4514) with a fresh P-256 key.
inline std::string MakeEcRequestDer(const std::string& subject, ossl::UniquePtr<EVP_PKEY>* key) {
  key->reset(EVP_EC_gen("P-256"));
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  auto name = pki::ParseName(subject);
  if (!name.ok()) return "";
  X509_REQ_set_subject_name(req.get(), name->get());
  X509_REQ_set_pubkey(req.get(), key->get());
  X509_REQ_sign(req.get(), key->get(), EVP_sha256());
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(req.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// A PKCS#10 built with the OpenSSL API: `subject` may be empty (as Windows
// autoenrollment sends); `key` receives the new key.
// An unsigned PKCS#10 for `key` with CN=`subject_cn` (none when empty).
inline ossl::UniquePtr<X509_REQ> UnsignedRequest(const std::string& subject_cn, EVP_PKEY* key) {
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  X509_REQ_set_version(req.get(), 0);
  if (!subject_cn.empty()) {
    X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req.get()), "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(subject_cn.c_str()), -1, -1,
                               0);
  }
  X509_REQ_set_pubkey(req.get(), key);
  return req;
}

// `req` signed by `key` (SHA-256), as DER; empty if it cannot be signed.
inline std::string SignedRequestDer(X509_REQ* req, EVP_PKEY* key) {
  if (X509_REQ_sign(req, key, EVP_sha256()) <= 0) return {};
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(req, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

inline std::string MakeRequestDer(const std::string& subject_cn, int rsa_bits,
                                  ossl::UniquePtr<EVP_PKEY>* key) {
  key->reset(EVP_RSA_gen(static_cast<unsigned>(rsa_bits)));
  auto req = UnsignedRequest(subject_cn, key->get());
  return SignedRequestDer(req.get(), key->get());
}

// Re-encodes the RSAPublicKey inside `spki` in BER: the public exponent's
// length in long form (02 81 03 instead of 02 03). OpenSSL decodes it to the
// same key; only the encoding differs from DER. False if `spki` is not an
// RSA key with a 3-byte exponent.
inline bool SetBerRsaKey(X509_PUBKEY* spki) {
  const unsigned char* bits = nullptr;
  int bits_len = 0;
  if (X509_PUBKEY_get0_param(nullptr, &bits, &bits_len, nullptr, spki) != 1 || bits_len < 10 ||
      bits[bits_len - 5] != 0x02 || bits[bits_len - 4] != 0x03) {
    return false;
  }
  // RSAPublicKey: 30 82 LL LL <modulus INTEGER> 02 03 01 00 01.
  const std::string canonical(reinterpret_cast<const char*>(bits), static_cast<size_t>(bits_len));
  std::string body = canonical.substr(4, canonical.size() - 4 - 5);
  body += std::string("\x02\x81\x03", 3) + canonical.substr(canonical.size() - 3);
  std::string rsa = {0x30, static_cast<char>(0x82), static_cast<char>(body.size() >> 8),
                     static_cast<char>(body.size() & 0xff)};
  rsa += body;
  auto* copy = static_cast<unsigned char*>(OPENSSL_memdup(rsa.data(), rsa.size()));
  return X509_PUBKEY_set0_param(spki, OBJ_nid2obj(NID_rsaEncryption), V_ASN1_NULL, nullptr, copy,
                                static_cast<int>(rsa.size())) == 1;
}

// A PKCS#10 for the RSA `key`, signed by it, with its key in BER
// (SetBerRsaKey); empty if it cannot be made.
inline std::string MakeBerKeyRequestDer(const std::string& subject_cn, EVP_PKEY* key) {
  auto req = UnsignedRequest(subject_cn, key);
  if (!SetBerRsaKey(X509_REQ_get_X509_PUBKEY(req.get()))) return {};
  return SignedRequestDer(req.get(), key);
}

// DER TLV with a short or long length.
inline std::string Tlv(uint8_t tag, const std::string& contents) {
  std::string out(1, static_cast<char>(tag));
  const size_t n = contents.size();
  if (n < 0x80) {
    out.push_back(static_cast<char>(n));
  } else if (n < 0x100) {
    out += {static_cast<char>(0x81), static_cast<char>(n)};
  } else {
    out += {static_cast<char>(0x82), static_cast<char>(n >> 8), static_cast<char>(n & 0xff)};
  }
  return out + contents;
}

// A CMC Full PKI Request without key archival around `csr_der`, signed by
// `key` with OpenSSL's CMS code (signer by subject key identifier, as
// Windows does): PKIData { {}, { [0] { 1, csr } }, {}, {} }.
// Key archival: `encrypted_key` is the 1.3.6.1.4.1.311.21.13 ContentInfo;
// `hash` goes into the signed 311.10.10.1 control as 311.21.21 (Windows
// layout, shared/vectors/windows-key-archival/README.md).
struct ArchivalPart {
  std::string encrypted_key;
  std::string hash;
};

inline std::string MakeCmcDer(const std::string& csr_der, EVP_PKEY* key,
                              const ArchivalPart* archival = nullptr) {
  const std::string tcr = Tlv(0xa0, Tlv(0x02, std::string(1, '\x01')) + csr_der);
  std::string controls;
  if (archival != nullptr) {
    const std::string oid_add_attributes("\x06\x0a\x2b\x06\x01\x04\x01\x82\x37\x0a\x0a\x01", 12);
    const std::string oid_key_hash("\x06\x09\x2b\x06\x01\x04\x01\x82\x37\x15\x15", 11);
    const std::string attr = Tlv(0x30, oid_key_hash + Tlv(0x31, Tlv(0x04, archival->hash)));
    const std::string info =
        Tlv(0x30, Tlv(0x02, std::string(1, '\0')) + Tlv(0x30, Tlv(0x02, std::string(1, '\x01'))) +
                      Tlv(0x31, attr));
    controls = Tlv(0x30, Tlv(0x02, std::string(1, '\x02')) + oid_add_attributes + Tlv(0x31, info));
  }
  const std::string pki_data =
      Tlv(0x30, Tlv(0x30, controls) + Tlv(0x30, tcr) + Tlv(0x30, "") + Tlv(0x30, ""));
  // CMS needs a certificate for the signer: a throwaway one carrying the key and its SKI.
  ossl::UniquePtr<X509> cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 60);
  X509_set_pubkey(cert.get(), key);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* ski = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_key_identifier, "hash");
  X509_add_ext(cert.get(), ski, -1);
  X509_EXTENSION_free(ski);
  X509_sign(cert.get(), key, EVP_sha256());
  ossl::UniquePtr<BIO> in(BIO_new_mem_buf(pki_data.data(), static_cast<int>(pki_data.size())));
  ossl::UniquePtr<CMS_ContentInfo> cms(
      CMS_sign(nullptr, nullptr, nullptr, nullptr, CMS_BINARY | CMS_PARTIAL | CMS_NOCERTS));
  ossl::UniquePtr<ASN1_OBJECT> pki_data_type(OBJ_txt2obj("1.3.6.1.5.5.7.12.2", 1));
  CMS_set1_eContentType(cms.get(), pki_data_type.get());
  CMS_SignerInfo* si = CMS_add1_signer(cms.get(), cert.get(), key, EVP_sha256(),
                                       CMS_BINARY | CMS_USE_KEYID | CMS_NOCERTS | CMS_NOSMIMECAP);
  CMS_final(cms.get(), in.get(), nullptr, CMS_BINARY);
  if (archival != nullptr) {
    // An ASN1_TYPE SEQUENCE holds its whole encoding.
    CMS_unsigned_add1_attr_by_txt(
        si, "1.3.6.1.4.1.311.21.13", V_ASN1_SEQUENCE,
        reinterpret_cast<const unsigned char*>(archival->encrypted_key.data()),
        static_cast<int>(archival->encrypted_key.size()));
  }
  unsigned char* der = nullptr;
  int len = i2d_CMS_ContentInfo(cms.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// The 21.13 ContentInfo: `plaintext` (a PRIVATEKEYBLOB or PKCS#8) encrypted
// to `exchange` with DES-EDE3-CBC and RSA PKCS#1 v1.5, as Windows sends it.
inline std::string EncryptToExchange(const std::string& plaintext, X509* exchange) {
  ossl::UniquePtr<STACK_OF(X509)> recipients(sk_X509_new_null());
  sk_X509_push(recipients.get(), exchange);
  ossl::UniquePtr<BIO> in(BIO_new_mem_buf(plaintext.data(), static_cast<int>(plaintext.size())));
  ossl::UniquePtr<CMS_ContentInfo> cms(
      CMS_encrypt(recipients.get(), in.get(), EVP_des_ede3_cbc(), CMS_BINARY));
  if (!cms) return {};
  unsigned char* der = nullptr;
  int len = i2d_CMS_ContentInfo(cms.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(std::max(len, 0)));
  OPENSSL_free(der);
  return out;
}

inline std::string Sha1Of(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha1(), nullptr);
  return std::string(reinterpret_cast<char*>(md), n);
}

// A unary call with raw bytes (GenericStub), as a client that does not use
// the generated code would make it; `reply` (optional) gets the answer's bytes.
inline grpc::Status CallRaw(const std::shared_ptr<grpc::Channel>& channel,
                            const std::string& method, const std::string& bytes,
                            std::string* reply = nullptr) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::Status result;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status st) {
    std::lock_guard<std::mutex> lock(mu);
    result = st;
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (result.ok() && reply != nullptr) {
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "dump");
    reply->clear();
    for (const auto& s : slices) reply->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return result;
}

// grpc.health.v1.Health/Check for `service` ("" for the whole server):
// 1 SERVING, 2 NOT_SERVING, -1 when the call failed (e.g. NOT_FOUND for a
// name never set).
inline int HealthOf(const std::shared_ptr<grpc::Channel>& channel,
                    const std::string& service = "") {
  std::string request;  // HealthCheckRequest { string service = 1; }
  if (!service.empty()) {
    request = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  }
  std::string bytes;
  if (!CallRaw(channel, "/grpc.health.v1.Health/Check", request, &bytes).ok()) return -1;
  // HealthCheckResponse { ServingStatus status = 1; }: 08 <status>
  if (bytes.size() != 2 || bytes[0] != 0x08) return -1;
  return bytes[1];
}

}  // namespace keywarden::testing
