#include "pki/certificate.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <algorithm>
#include <climits>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/der.h"
#include "pki/files.h"

namespace keywarden::pki {
namespace {

using hsm::OpenSslError;

// Splits `text` at every `sep` that is not escaped; escapes are kept.
absl::StatusOr<std::vector<std::string>> SplitUnescaped(std::string_view text, char sep) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\\') {
      if (i + 1 == text.size()) return absl::InvalidArgumentError("name ends with a backslash");
      out.back().push_back(c);
      out.back().push_back(text[++i]);
    } else if (c == sep) {
      out.emplace_back();
    } else {
      out.back().push_back(c);
    }
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The first '=' that is not escaped, or npos.
size_t UnescapedEquals(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
    } else if (s[i] == '=') {
      return i;
    }
  }
  return std::string_view::npos;
}

// An attribute value as RFC 4514 writes it: "\XX" is the byte XX, "\c" is
// c, and spaces at either end are dropped unless escaped.
std::string UnescapeValue(std::string_view raw) {
  std::vector<std::pair<char, bool>> chars;  // (byte, escaped)
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 == raw.size()) {
      chars.emplace_back(raw[i], false);
    } else if (i + 2 < raw.size() && HexDigit(raw[i + 1]) >= 0 && HexDigit(raw[i + 2]) >= 0) {
      chars.emplace_back(static_cast<char>(HexDigit(raw[i + 1]) * 16 + HexDigit(raw[i + 2])), true);
      i += 2;
    } else {
      chars.emplace_back(raw[++i], true);
    }
  }
  size_t b = 0, e = chars.size();
  while (b < e && chars[b].first == ' ' && !chars[b].second) ++b;
  while (e > b && chars[e - 1].first == ' ' && !chars[e - 1].second) --e;
  std::string out;
  for (size_t i = b; i < e; ++i) out.push_back(chars[i].first);
  return out;
}

std::string Trim(std::string s) {
  size_t b = s.find_first_not_of(' ');
  size_t e = s.find_last_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string Thumbprint(X509* cert, const EVP_MD* md) {
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!X509_digest(cert, md, buf, &len)) return {};
  return HexString({buf, len});
}

}  // namespace

absl::StatusOr<ossl::UniquePtr<X509_NAME>> ParseName(std::string_view text) {
  ossl::UniquePtr<X509_NAME> name(X509_NAME_new());
  if (!name) return OpenSslError("parse name");
  const bool slash_form = !text.empty() && text.front() == '/';
  auto split = SplitUnescaped(slash_form ? text.substr(1) : text, slash_form ? '/' : ',');
  if (!split.ok())
    return absl::InvalidArgumentError(StrCat("name \"", text, "\": ", split.status().message()));
  std::vector<std::string> rdns = std::move(*split);
  // RFC 4514 lists the last RDN first, and within a multi-valued RDN
  // ("OU=x+CN=y") the values in the reverse of the order they are kept.
  if (!slash_form) std::reverse(rdns.begin(), rdns.end());
  for (const std::string& raw : rdns) {
    // Not trimmed here: a value may end in an escaped space.
    const std::string& rdn = raw;
    if (Trim(rdn).empty()) {
      if (rdns.size() == 1) break;  // the empty name
      return absl::InvalidArgumentError(StrCat("name \"", text, "\": empty component"));
    }
    auto values = SplitUnescaped(rdn, '+');
    if (!values.ok()) {
      return absl::InvalidArgumentError(StrCat("name \"", text, "\": ", values.status().message()));
    }
    if (!slash_form) std::reverse(values->begin(), values->end());
    for (size_t v = 0; v < values->size(); ++v) {
      const std::string& ava = (*values)[v];
      const size_t eq = UnescapedEquals(ava);
      const std::string type = Trim(ava.substr(0, std::min(eq, ava.size())));
      if (eq == std::string::npos || type.empty()) {
        return absl::InvalidArgumentError(
            StrCat("name \"", text, "\": component \"", Trim(ava), "\" is not TYPE=value"));
      }
      const std::string value = UnescapeValue(std::string_view(ava).substr(eq + 1));
      if (OBJ_txt2nid(type.c_str()) == NID_undef) {
        return absl::InvalidArgumentError(
            StrCat("name \"", text, "\": unknown attribute type \"", type, "\""));
      }
      // The second and later values of an RDN join the one before.
      if (!X509_NAME_add_entry_by_txt(name.get(), type.c_str(), MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(value.data()),
                                      static_cast<int>(value.size()), -1, v == 0 ? 0 : -1)) {
        ERR_clear_error();
        return absl::InvalidArgumentError(
            StrCat("name \"", text, "\": value of ", type, " is not acceptable (\"", value, "\")"));
      }
    }
  }
  return name;
}

std::string FormatName(const X509_NAME* name) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

namespace {

// Random bytes (from `fill`) as a positive serial of the full length: the
// sign bit is cleared and a zero first octet drawn again.
template <typename Fill>
absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> SerialFrom(size_t bytes, Fill fill) {
  if (bytes < 8 || bytes > 20) return absl::InvalidArgumentError("serial: 8 to 20 bytes");
  std::vector<uint8_t> buf(bytes);
  do {
    if (auto st = fill(buf); !st.ok()) return st;
    buf[0] &= 0x7f;       // positive
  } while (buf[0] == 0);  // keep the full length: no leading zero octet
  ossl::UniquePtr<BIGNUM> bn(BN_bin2bn(buf.data(), static_cast<int>(buf.size()), nullptr));
  ossl::UniquePtr<ASN1_INTEGER> serial(bn ? BN_to_ASN1_INTEGER(bn.get(), nullptr) : nullptr);
  if (!serial) return OpenSslError("serial");
  return serial;
}

}  // namespace

absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> RandomSerial(size_t bytes) {
  return SerialFrom(bytes, [](std::vector<uint8_t>& buf) {
    if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) return OpenSslError("serial");
    return absl::OkStatus();
  });
}

absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> TokenRandomSerial(hsm::Token& token, size_t bytes) {
  return SerialFrom(bytes, [&token](std::vector<uint8_t>& buf) {
    auto random = token.GenerateRandom(buf.size());
    if (!random.ok()) return random.status();
    if (random->size() != buf.size()) {
      return absl::InternalError("serial: the token returned too few random bytes");
    }
    std::copy(random->begin(), random->end(), buf.begin());
    return absl::OkStatus();
  });
}

absl::Status SignCertificate(OSSL_LIB_CTX* libctx, X509* cert, EVP_PKEY* key,
                             const SignatureOptions& options) {
  ossl::UniquePtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  const bool ec = EVP_PKEY_is_a(key, "EC");
  if (!mctx || EVP_DigestSignInit_ex(mctx.get(), &pctx, options.digest.c_str(), libctx, nullptr,
                                     key, nullptr) <= 0) {
    return OpenSslError(StrCat("sign certificate with ", options.digest));
  }
  if (options.rsa_pss) {
    if (ec) return absl::InvalidArgumentError("sign certificate: RSA-PSS needs an RSA key");
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0) {
      return OpenSslError("sign certificate: RSA-PSS parameters");
    }
  }
  if (X509_sign_ctx(cert, mctx.get()) <= 0) return OpenSslError("sign certificate");
  return absl::OkStatus();
}

absl::Status VerifySignature(X509* cert, EVP_PKEY* issuer_public) {
  if (X509_verify(cert, issuer_public) != 1) {
    return OpenSslError("certificate signature does not verify", absl::StatusCode::kDataLoss);
  }
  return absl::OkStatus();
}

absl::StatusOr<ossl::UniquePtr<X509>> MakeSelfSignedRoot(OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                                                         const RootCaOptions& options) {
  if (key == nullptr) return absl::InvalidArgumentError("root certificate: no key");
  if (options.subject == nullptr || X509_NAME_entry_count(options.subject) == 0) {
    return absl::InvalidArgumentError("root certificate: the subject name is empty");
  }
  if (options.validity_days <= 0 || options.validity_days > 36500) {
    return absl::InvalidArgumentError("root certificate: validity must be 1 to 36500 days");
  }
  ossl::UniquePtr<X509> cert(X509_new_ex(libctx, nullptr));
  if (!cert) return OpenSslError("root certificate");
  absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>> serial =
      options.serial != nullptr
          ? absl::StatusOr<ossl::UniquePtr<ASN1_INTEGER>>(ASN1_INTEGER_dup(options.serial))
          : RandomSerial();
  if (!serial.ok()) return serial.status();
  if (*serial == nullptr) return OpenSslError("root certificate: serial");
  if (!X509_set_version(cert.get(), X509_VERSION_3) ||
      !X509_set_serialNumber(cert.get(), serial->get()) ||
      !X509_set_subject_name(cert.get(), options.subject) ||
      !X509_set_issuer_name(cert.get(), options.subject) ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), options.validity_days, 0, nullptr) ||
      !X509_set_pubkey(cert.get(), key)) {
    return OpenSslError("root certificate: fields");
  }
  std::string bc = options.path_length >= 0
                       ? StrCat("critical,CA:TRUE,pathlen:", options.path_length)
                       : std::string("critical,CA:TRUE");
  if (!AddExtension(cert.get(), cert.get(), NID_basic_constraints, bc.c_str()) ||
      !AddExtension(cert.get(), cert.get(), NID_key_usage,
                    "critical,digitalSignature,keyCertSign,cRLSign") ||
      !AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash") ||
      !AddExtension(cert.get(), cert.get(), NID_authority_key_identifier, "keyid:always")) {
    return OpenSslError("root certificate: extensions");
  }
  if (auto st = SignCertificate(libctx, cert.get(), key, options.signature); !st.ok()) return st;
  // Check the signature right after making it (an HSM fault must not ship).
  ossl::UniquePtr<X509> decoded = SoftwareCopy(cert.get());
  if (!decoded) return OpenSslError("root certificate: re-decode");
  if (auto st = VerifySignature(decoded.get(), X509_get0_pubkey(decoded.get())); !st.ok())
    return st;
  return cert;
}

absl::StatusOr<ossl::UniquePtr<X509_REQ>> MakeCaRequest(OSSL_LIB_CTX* libctx, EVP_PKEY* key,
                                                        const X509_NAME* subject,
                                                        const SignatureOptions& signature,
                                                        bool ca) {
  if (key == nullptr || subject == nullptr || X509_NAME_entry_count(subject) == 0) {
    return absl::InvalidArgumentError("CA request: a key and a non-empty subject are required");
  }
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new_ex(libctx, nullptr));
  if (!req || !X509_REQ_set_version(req.get(), 0) ||
      !X509_REQ_set_subject_name(req.get(), subject) || !X509_REQ_set_pubkey(req.get(), key)) {
    return OpenSslError("CA request: fields");
  }
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, nullptr, nullptr, req.get(), nullptr, 0);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  for (auto [nid, value] :
       {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
        std::pair{NID_key_usage, "critical,digitalSignature,keyCertSign,cRLSign"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    if (ext != nullptr) sk_X509_EXTENSION_push(exts, ext);
  }
  const int ok = ca ? X509_REQ_add_extensions(req.get(), exts) : 1;
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  if (!ok) return OpenSslError("CA request: extensions");
  ossl::UniquePtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit_ex(mctx.get(), &pctx, signature.digest.c_str(), libctx, nullptr, key,
                            nullptr) <= 0 ||
      (signature.rsa_pss &&
       (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0)) ||
      X509_REQ_sign_ctx(req.get(), mctx.get()) <= 0) {
    return OpenSslError("CA request: sign");
  }
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  const unsigned char* p = der;
  ossl::UniquePtr<X509_REQ> decoded(len > 0 ? d2i_X509_REQ(nullptr, &p, len) : nullptr);
  OPENSSL_free(der);
  if (!decoded || X509_REQ_verify(decoded.get(), X509_REQ_get0_pubkey(decoded.get())) != 1) {
    return OpenSslError("CA request: the signature made on the token does not verify");
  }
  return req;
}

absl::Status CheckSubordinateCertificate(X509* cert, EVP_PKEY* key,
                                         const std::vector<ossl::UniquePtr<X509>>& issuers) {
  if (cert == nullptr) return absl::InvalidArgumentError("install: no certificate");
  if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("install: the certificate is not for the key on the token");
  }
  if (X509_check_ca(cert) != 1) {
    return absl::InvalidArgumentError(
        "install: the certificate is not a CA certificate (no basicConstraints CA:TRUE)");
  }
  if (issuers.empty())
    return absl::InvalidArgumentError("install: give the issuing CA chain (--chain)");
  ossl::UniquePtr<X509_STORE> store(X509_STORE_new());
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  for (size_t i = 0; i < issuers.size(); ++i) {
    X509* c = issuers[i].get();
    const bool self_signed = X509_check_issued(c, c) == X509_V_OK;
    if (self_signed) {
      X509_STORE_add_cert(store.get(), c);
    } else {
      sk_X509_push(untrusted, c);
    }
  }
  ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  int ok = X509_STORE_CTX_init(ctx.get(), store.get(), cert, untrusted) == 1 &&
           X509_verify_cert(ctx.get()) == 1;
  const int err = X509_STORE_CTX_get_error(ctx.get());
  sk_X509_free(untrusted);
  if (!ok) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        StrCat("install: the certificate does not chain to the given issuers: ",
               X509_verify_cert_error_string(err)));
  }
  return absl::OkStatus();
}

std::string ToPem(X509_REQ* request) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), request);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::vector<uint8_t> CertificateDer(X509* cert) {
  unsigned char* der = nullptr;
  const int len = cert != nullptr ? i2d_X509(cert, &der) : 0;
  std::vector<uint8_t> out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

std::span<const uint8_t> CertificateSpki(std::span<const uint8_t> der) {
  DerReader outer(der);
  DerElement cert, tbs, e;
  if (!outer.Expect(der::kSequence, &cert) || !outer.empty()) return {};
  DerReader c(cert.contents);
  if (!c.Expect(der::kSequence, &tbs) || !c.Expect(der::kSequence, &e) ||
      !c.Expect(der::kBitString, &e) || !c.empty()) {
    return {};
  }
  DerReader t(tbs.contents);
  uint8_t tag = 0;
  if (t.PeekTag(&tag) && tag == 0xa0 && !t.Next(&e)) return {};  // [0] version
  DerElement spki;
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
  if (!t.Expect(der::kInteger, &e) || !t.Expect(der::kSequence, &e) ||
      !t.Expect(der::kSequence, &e) || !t.Expect(der::kSequence, &e) ||
      !t.Expect(der::kSequence, &e) || !t.Expect(der::kSequence, &spki)) {
    return {};
  }
  return spki.whole;
}

ossl::UniquePtr<X509> SoftwareCopy(X509* cert) {
  const std::vector<uint8_t> der = CertificateDer(cert);
  const unsigned char* p = der.data();
  return ossl::UniquePtr<X509>(der.empty() ? nullptr
                                           : d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

bool AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) return false;
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok == 1;
}

absl::StatusOr<std::vector<ossl::UniquePtr<X509>>> ReadPemCertificates(const std::string& path) {
  auto bytes = ReadFileBytes(path, 4 << 20);
  if (!bytes.ok()) return bytes.status();
  std::vector<ossl::UniquePtr<X509>> out = ParsePemCertificates(*bytes);
  if (out.empty()) return absl::InvalidArgumentError(StrCat(path, ": no PEM certificate in it"));
  return out;
}

std::vector<ossl::UniquePtr<X509>> ParsePemCertificates(std::span<const uint8_t> pem) {
  std::vector<ossl::UniquePtr<X509>> out;
  if (pem.empty() || pem.size() > static_cast<size_t>(INT_MAX)) return out;
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();
  return out;
}

absl::StatusOr<std::vector<ossl::UniquePtr<X509_CRL>>> ReadCrlFile(const std::string& path) {
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return ParseCrls(*bytes, path);
}

absl::StatusOr<std::vector<ossl::UniquePtr<X509_CRL>>> ParseCrls(std::span<const uint8_t> bytes,
                                                                 std::string_view source) {
  if (bytes.empty() || bytes.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(StrCat(source, ": not a PEM or DER CRL"));
  }
  std::vector<ossl::UniquePtr<X509_CRL>> out;
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    out.emplace_back(crl);
  }
  ERR_clear_error();
  if (out.empty()) {
    const unsigned char* p = bytes.data();
    ossl::UniquePtr<X509_CRL> crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(bytes.size())));
    ERR_clear_error();
    if (!crl || p != bytes.data() + bytes.size()) {
      return absl::InvalidArgumentError(StrCat(source, ": not a PEM or DER CRL"));
    }
    out.push_back(std::move(crl));
  }
  return out;
}

std::string Sha1Thumbprint(X509* cert) {
  return Thumbprint(cert, EVP_sha1());
}
std::string Sha256Thumbprint(X509* cert) {
  return Thumbprint(cert, EVP_sha256());
}

std::string ToPem(X509* cert) {
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string CommonNameOfRfc4514(std::string_view dn) {
  auto hex_value = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  size_t i = 0;
  const size_t n = dn.size();
  while (i < n) {
    while (i < n && dn[i] == ' ') ++i;
    size_t eq = dn.find('=', i);
    if (eq == std::string_view::npos) return {};
    std::string_view type = dn.substr(i, eq - i);
    while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
    i = eq + 1;
    while (i < n && dn[i] == ' ') ++i;

    std::string value;
    size_t significant = 0;  // value length without unescaped trailing spaces
    bool quoted = i < n && dn[i] == '"';
    if (quoted) ++i;
    while (i < n) {
      char c = dn[i];
      if (c == '\\' && i + 1 < n) {
        int hi = hex_value(dn[i + 1]);
        int lo = i + 2 < n ? hex_value(dn[i + 2]) : -1;
        if (hi >= 0 && lo >= 0) {
          value.push_back(static_cast<char>(hi * 16 + lo));
          i += 3;
        } else {
          value.push_back(dn[i + 1]);
          i += 2;
        }
        significant = value.size();
        continue;
      }
      if (quoted) {
        ++i;
        if (c == '"') {
          quoted = false;
          significant = value.size();
        } else {
          value.push_back(c);
          significant = value.size();
        }
        continue;
      }
      if (c == ',' || c == '+' || c == ';') break;
      value.push_back(c);
      if (c != ' ') significant = value.size();
      ++i;
    }
    value.resize(significant);
    if (i < n) ++i;  // the separator

    std::string lower_type = AsciiLower(type);
    if (lower_type == "cn" || lower_type == "commonname" || lower_type == "2.5.4.3") return value;
  }
  return {};
}

}  // namespace keywarden::pki
