#include "service/ca/issuer.h"

#include <openssl/err.h>
#include <openssl/rsa.h>

#include <algorithm>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/alt_names.h"
#include "pki/der.h"
#include "pki/publication_extensions.h"
#include "pki/spki.h"
#include "service/authz.h"
#include "service/errors.h"

namespace keywarden::service {
namespace {

using hsm::OpenSslError;

ossl::UniquePtr<ASN1_INTEGER> SerialFromHex(const std::string& hex) {
  BIGNUM* bn = nullptr;
  if (hex.empty() || BN_hex2bn(&bn, hex.c_str()) == 0) return nullptr;
  ossl::UniquePtr<BIGNUM> owned(bn);
  return ossl::UniquePtr<ASN1_INTEGER>(BN_to_ASN1_INTEGER(bn, nullptr));
}

// At most this many names in a subjectAltName taken from a request, and
// this many bytes of S/MIME capabilities (Windows sends about 100).
constexpr size_t kMaxRequestedAltNames = 32;
constexpr size_t kMaxSmimeCapabilities = 4096;

bool Lists(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

absl::StatusOr<std::vector<RawExtension>> TemplateExtensions(const Config& config,
                                                             const TemplateConfig& t,
                                                             X509_REQ* request,
                                                             const std::string& owner,
                                                             const std::vector<Role>& owner_roles) {
  std::vector<RawExtension> out;
  pki::AltNames names;
  if (t.san == SanSource::kDirectory) {
    const AccountConfig* account = config.AccountByPrincipal(owner);
    auto missing = [&](const char* what) {
      return account == nullptr ? StrCat("\"", owner, "\" has no [[account]] in the directory")
                                : StrCat("the [[account]] of \"", owner, "\" has no ", what);
    };
    if (Lists(t.san_names, "upn")) {
      if (account == nullptr || account->upn.empty()) {
        return Error(hresult::kSubjectUpnRequired,
                     StrCat("template ", t.name, " puts the UPN in the subjectAltName and ",
                            missing("upn")));
      }
      names.upns.push_back(account->upn);
    }
    if (Lists(t.san_names, "email")) {
      if (account == nullptr || account->email.empty()) {
        return Error(hresult::kSubjectEmailRequired,
                     StrCat("template ", t.name, " puts the e-mail name in the subjectAltName and ",
                            missing("email")));
      }
      names.emails.push_back(account->email);
    }
  } else if (t.san == SanSource::kRequest) {
    auto requested = pki::RequestAltNames(request);
    if (!requested.ok()) {
      return Error(hresult::kBadRequestSubject, std::string(requested.status().message()));
    }
    names = std::move(*requested);
    auto refuse = [&](const std::string& what) {
      return Error(hresult::kBadRequestSubject,
                   StrCat("the request's subjectAltName holds ", what, "; template ", t.name,
                          " accepts only: ", StrJoin(t.san_names, ", ")));
    };
    if (!names.others.empty())
      return refuse(StrCat("a name of another type (", names.others[0], ")"));
    if (!names.upns.empty() && !Lists(t.san_names, "upn")) return refuse("a UPN");
    if (!names.emails.empty() && !Lists(t.san_names, "email")) return refuse("an e-mail name");
    if (!names.dns_names.empty() && !Lists(t.san_names, "dns")) return refuse("a DNS name");
    const size_t count = names.upns.size() + names.emails.size() + names.dns_names.size();
    if (count > kMaxRequestedAltNames) {
      return Error(hresult::kBadRequestSubject,
                   StrCat("the request's subjectAltName holds ", count, " names; the limit is ",
                          kMaxRequestedAltNames));
    }
  }
  if (!names.empty()) {
    if (auto st = CheckAltNamesNoPrincipal(config, names.upns, names.emails, owner, owner_roles);
        !st.ok()) {
      return st;
    }
    auto value = pki::EncodeAltNames(names);
    if (!value.ok())
      return Error(hresult::kBadRequestSubject, std::string(value.status().message()));
    out.push_back({"2.5.29.17", std::move(*value)});
  }

  if (!t.oid.empty()) {
    out.push_back({pki::kTemplateV2ExtensionOid,
                   pki::TemplateV2ExtensionValue(t.oid, static_cast<uint64_t>(t.major_version),
                                                 static_cast<uint64_t>(t.minor_version))});
  } else {
    out.push_back({pki::kTemplateV1ExtensionOid, pki::TemplateV1ExtensionValue(t.name)});
  }
  if (out.back().value.empty()) {
    return absl::InternalError(
        StrCat("template ", t.name, ": its certificate-template extension does not encode"));
  }

  if (t.smime_capabilities) {
    if (auto caps = pki::RequestExtensionValue(request, pki::kSmimeCapabilitiesOid)) {
      pki::DerReader reader(*caps);
      pki::DerElement seq;
      if (caps->size() > kMaxSmimeCapabilities || !reader.Expect(pki::der::kSequence, &seq) ||
          !reader.empty()) {
        return Error(
            hresult::kInvalidArg,
            StrCat("the request's S/MIME capabilities (", pki::kSmimeCapabilitiesOid,
                   ") are not one DER SEQUENCE of at most ", kMaxSmimeCapabilities, " bytes"));
      }
      out.push_back({pki::kSmimeCapabilitiesOid, std::move(*caps)});
    }
  }
  return out;
}

absl::StatusOr<std::vector<RawExtension>> PublicationExtensions(const Config::Publication& p) {
  std::vector<RawExtension> out;
  if (!p.crl_urls.empty()) {
    auto value = pki::CrlDistributionPointsValue(p.crl_urls);
    if (value.empty()) {
      return absl::InternalError("publication.crl_urls: the cRLDistributionPoints do not encode");
    }
    out.push_back({pki::kCrlDistributionPointsOid, std::move(value)});
  }
  if (!p.ca_issuers_urls.empty()) {
    auto value = pki::AuthorityInfoAccessValue(p.ca_issuers_urls);
    if (value.empty()) {
      return absl::InternalError(
          "publication.ca_issuers_urls: the authorityInfoAccess does not encode");
    }
    out.push_back({pki::kAuthorityInfoAccessOid, std::move(value)});
  }
  return out;
}

std::string SerialHex(const X509* cert) {
  return SerialHex(X509_get0_serialNumber(cert));
}

std::string SerialHex(const ASN1_INTEGER* s) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(s, nullptr));
  std::vector<uint8_t> bytes(static_cast<size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), bytes.data());
  std::string hex = HexString(bytes);
  return hex.empty() ? "00" : hex;
}

std::string NormalizeSerial(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' || c == ':' || c == '\t') continue;
    out.push_back(static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c));
  }
  if (out.size() % 2 != 0) out.insert(out.begin(), '0');
  // Drop leading zero octets, as SerialHex does (the sign octet of DER).
  while (out.size() > 2 && out[0] == '0' && out[1] == '0') out.erase(0, 2);
  return out;
}

CertificateRecord CertificateRecordFor(X509* cert, int64_t request_id,
                                       const std::string& template_name) {
  CertificateRecord r;
  r.serial = SerialHex(cert);
  r.request_id = request_id;
  r.der = pki::CertificateDer(cert);
  r.subject = pki::FormatName(X509_get_subject_name(cert));
  r.template_name = template_name;
  // What getkey and `officer find` search by: the first UPN and e-mail name.
  // A subjectAltName that does not decode leaves both empty (the certificate
  // is then found by serial, hash or CN only).
  if (auto names = pki::CertificateAltNames(cert); names.ok()) {
    if (!names->upns.empty()) r.upn = names->upns.front();
    if (!names->emails.empty()) r.email = names->emails.front();
  }
  r.sha1 = pki::Sha1Thumbprint(cert);
  r.sha256 = pki::Sha256Thumbprint(cert);
  r.not_before = ToUnix(X509_get0_notBefore(cert));
  r.not_after = ToUnix(X509_get0_notAfter(cert));
  return r;
}

int64_t ToUnix(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

absl::StatusOr<std::unique_ptr<Issuer>> Issuer::Create(OSSL_LIB_CTX* libctx, const char* properties,
                                                       ossl::UniquePtr<X509> ca_certificate,
                                                       ossl::UniquePtr<EVP_PKEY> signing_key,
                                                       pki::SignatureOptions signature) {
  if (!ca_certificate || !signing_key)
    return absl::InvalidArgumentError("issuer: no CA certificate or key");
  std::unique_ptr<Issuer> issuer(new Issuer());
  issuer->libctx_ = libctx;
  issuer->properties_ = properties != nullptr ? properties : "";
  // A software copy of the CA public key, for checking every signature.
  ossl::UniquePtr<X509> decoded = pki::SoftwareCopy(ca_certificate.get());
  if (!decoded) return OpenSslError("issuer: CA certificate does not encode");
  issuer->ca_public_.reset(X509_get_pubkey(decoded.get()));
  if (EVP_PKEY_eq(issuer->ca_public_.get(), signing_key.get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        "the CA certificate's public key does not match the CA signing key on the token");
  }
  issuer->ca_software_ = std::move(decoded);
  issuer->ca_ = std::move(ca_certificate);
  issuer->key_ = std::move(signing_key);
  issuer->signature_ = std::move(signature);
  return issuer;
}

int64_t Issuer::ca_not_after() const {
  return ToUnix(X509_get0_notAfter(ca_.get()));
}

absl::Status Issuer::SignAndCheck(X509* cert) const {
  ossl::UniquePtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestSignInit_ex(mctx.get(), &pctx, signature_.digest.c_str(), libctx_,
                            properties_.empty() ? nullptr : properties_.c_str(), key_.get(),
                            nullptr) <= 0) {
    return OpenSslError("sign certificate");
  }
  if (signature_.rsa_pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
                             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0)) {
    return OpenSslError("sign certificate: PSS");
  }
  if (X509_sign_ctx(cert, mctx.get()) <= 0) return OpenSslError("sign certificate");
  if (X509_verify(cert, ca_public_.get()) != 1) {
    return OpenSslError("the token produced a certificate signature that does not verify",
                        absl::StatusCode::kInternal);
  }
  return absl::OkStatus();
}

namespace {

// Copies `from` (algorithm, parameters, key bits) into `cert`'s
// SubjectPublicKeyInfo, without decoding or encoding the key.
bool CopySpki(const X509_PUBKEY* from, X509* cert) {
  const unsigned char* bits = nullptr;
  int bits_len = 0;
  X509_ALGOR* alg = nullptr;
  if (X509_PUBKEY_get0_param(nullptr, &bits, &bits_len, &alg, from) != 1 || bits_len <= 0) {
    return false;
  }
  return pki::SetSpkiParts(X509_get_X509_PUBKEY(cert), alg, {bits, static_cast<size_t>(bits_len)});
}

}  // namespace

absl::StatusOr<ossl::UniquePtr<X509>> Issuer::IssueCertificate(const CertificateSpec& spec) const {
  if (spec.subject == nullptr || spec.public_key == nullptr) {
    return absl::InvalidArgumentError("issue: no subject or public key");
  }
  ossl::UniquePtr<X509> cert(X509_new_ex(libctx_, nullptr));
  auto serial = pki::RandomSerial();
  if (!cert || !serial.ok()) return OpenSslError("issue: allocate");
  const int64_t not_after = std::min(spec.not_after, ca_not_after());
  if (not_after <= spec.not_before) {
    return absl::FailedPreconditionError(
        "issue: the CA certificate expires before the new certificate would start");
  }
  if (!X509_set_version(cert.get(), X509_VERSION_3) ||
      !X509_set_serialNumber(cert.get(), serial->get()) ||
      !X509_set_subject_name(cert.get(), spec.subject) ||
      !X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_.get())) ||
      !ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(spec.not_before)) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after)) ||
      !(spec.spki != nullptr ? CopySpki(spec.spki, cert.get())
                             : X509_set_pubkey(cert.get(), spec.public_key) == 1)) {
    return OpenSslError("issue: certificate fields");
  }
  std::string ku = StrJoin(spec.key_usage, ",");
  std::string eku = StrJoin(spec.extended_key_usage, ",");
  if (!pki::AddExtension(cert.get(), ca_.get(), NID_basic_constraints, "critical,CA:FALSE") ||
      (!ku.empty() && !pki::AddExtension(cert.get(), ca_.get(), NID_key_usage,
                                         (spec.key_usage_critical ? "critical," : "") + ku)) ||
      (!eku.empty() && !pki::AddExtension(cert.get(), ca_.get(), NID_ext_key_usage, eku)) ||
      !pki::AddExtension(cert.get(), ca_.get(), NID_subject_key_identifier, "hash") ||
      !pki::AddExtension(cert.get(), ca_.get(), NID_authority_key_identifier, "keyid:always")) {
    return OpenSslError("issue: extensions", absl::StatusCode::kInvalidArgument);
  }
  std::vector<const RawExtension*> extensions;
  for (const RawExtension& e : spec.extensions) extensions.push_back(&e);
  for (const RawExtension& e : publication_) {
    // A spec that brings its own (none does today) keeps it.
    if (std::none_of(spec.extensions.begin(), spec.extensions.end(),
                     [&](const RawExtension& s) { return s.oid == e.oid; })) {
      extensions.push_back(&e);
    }
  }
  for (const RawExtension* ep : extensions) {
    const RawExtension& e = *ep;
    if (!pki::AddRawExtension(cert.get(), e.oid.c_str(), e.value, e.critical)) {
      return OpenSslError(StrCat("issue: extension ", e.oid), absl::StatusCode::kInvalidArgument);
    }
  }
  if (auto st = SignAndCheck(cert.get()); !st.ok()) return st;
  return cert;
}

absl::StatusOr<ossl::UniquePtr<X509_CRL>> Issuer::IssueCrl(const std::vector<RevokedEntry>& revoked,
                                                           int64_t crl_number, int64_t this_update,
                                                           int64_t next_update) const {
  ossl::UniquePtr<X509_CRL> crl(X509_CRL_new_ex(libctx_, nullptr));
  ossl::UniquePtr<ASN1_TIME> t(ASN1_TIME_new());
  if (!crl || !t || !X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) ||
      !X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca_.get())) ||
      !ASN1_TIME_set(t.get(), static_cast<time_t>(this_update)) ||
      !X509_CRL_set1_lastUpdate(crl.get(), t.get()) ||
      !ASN1_TIME_set(t.get(), static_cast<time_t>(next_update)) ||
      !X509_CRL_set1_nextUpdate(crl.get(), t.get())) {
    return OpenSslError("CRL: fields");
  }
  for (const RevokedEntry& e : revoked) {
    X509_REVOKED* r = X509_REVOKED_new();
    auto serial = SerialFromHex(e.serial);
    ossl::UniquePtr<ASN1_TIME> when(ASN1_TIME_new());
    ASN1_ENUMERATED* reason = ASN1_ENUMERATED_new();
    bool ok = r != nullptr && serial && when && reason &&
              X509_REVOKED_set_serialNumber(r, serial.get()) &&
              ASN1_TIME_set(when.get(), static_cast<time_t>(e.revoked_at)) &&
              X509_REVOKED_set_revocationDate(r, when.get()) &&
              (e.reason == 0 || (ASN1_ENUMERATED_set(reason, e.reason) &&
                                 X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, reason, 0, 0))) &&
              X509_CRL_add0_revoked(crl.get(), r);
    ASN1_ENUMERATED_free(reason);
    if (!ok) {
      X509_REVOKED_free(r);
      return OpenSslError(StrCat("CRL: entry for serial ", e.serial));
    }
  }
  X509_CRL_sort(crl.get());
  ossl::UniquePtr<ASN1_INTEGER> number(ASN1_INTEGER_new());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_.get(), nullptr, nullptr, crl.get(), 0);
  X509_EXTENSION* aki =
      X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always");
  bool ok = number && ASN1_INTEGER_set_int64(number.get(), crl_number) &&
            X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) &&
            aki != nullptr && X509_CRL_add_ext(crl.get(), aki, -1);
  X509_EXTENSION_free(aki);
  if (!ok) return OpenSslError("CRL: extensions");

  ossl::UniquePtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
  if (EVP_DigestSignInit_ex(mctx.get(), nullptr, signature_.digest.c_str(), libctx_,
                            properties_.empty() ? nullptr : properties_.c_str(), key_.get(),
                            nullptr) <= 0 ||
      X509_CRL_sign_ctx(crl.get(), mctx.get()) <= 0) {
    return OpenSslError("CRL: sign");
  }
  if (X509_CRL_verify(crl.get(), ca_public_.get()) != 1) {
    return OpenSslError("the token produced a CRL signature that does not verify");
  }
  return crl;
}

}  // namespace keywarden::service
