// Reading keywarden's error detail (RpcStatus + ErrorDetail in the
// grpc-status-details-bin trailer) and making requests in tests.
#pragma once

#include <cstdint>
#include <string>

#include <grpcpp/grpcpp.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

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
inline std::string MakeCmcDer(const std::string& csr_der, EVP_PKEY* key) {
  const std::string tcr = Tlv(0xa0, Tlv(0x02, std::string(1, '\x01')) + csr_der);
  const std::string pki_data =
      Tlv(0x30, Tlv(0x30, "") + Tlv(0x30, tcr) + Tlv(0x30, "") + Tlv(0x30, ""));
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
  CMS_set1_eContentType(cms.get(), OBJ_txt2obj("1.3.6.1.5.5.7.12.2", 1));
  CMS_add1_signer(cms.get(), cert.get(), key, EVP_sha256(),
                  CMS_BINARY | CMS_USE_KEYID | CMS_NOCERTS | CMS_NOSMIMECAP);
  CMS_final(cms.get(), in.get(), nullptr, CMS_BINARY);
  unsigned char* der = nullptr;
  int len = i2d_CMS_ContentInfo(cms.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace keywarden::testing
