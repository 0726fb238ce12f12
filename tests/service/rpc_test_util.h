// Reading keywarden's error detail (RpcStatus + ErrorDetail in the
// grpc-status-details-bin trailer) and making requests in tests.
#pragma once

#include <cstdint>
#include <string>

#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "hsm/ossl.h"
#include "keywarden/v1/keywarden.pb.h"

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

// A PKCS#10 built with the OpenSSL API: `subject` may be empty (as Windows
// autoenrollment sends); `key` receives the new key.
inline std::string MakeRequestDer(const std::string& subject_cn, int rsa_bits,
                                  ossl::UniquePtr<EVP_PKEY>* key) {
  key->reset(EVP_RSA_gen(static_cast<unsigned>(rsa_bits)));
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  X509_REQ_set_version(req.get(), 0);
  if (!subject_cn.empty()) {
    X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req.get()), "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(subject_cn.c_str()), -1, -1,
                               0);
  }
  X509_REQ_set_pubkey(req.get(), key->get());
  X509_REQ_sign(req.get(), key->get(), EVP_sha256());
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace keywarden::testing
