#include "cli/ceremony/ceremony.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <unistd.h>
#include <chrono>
#include <ctime>
#include <filesystem>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/ceremony_transcript.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "pki/kra_card.h"
#include "pki/pkcs10.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"

namespace keywarden::ceremony {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr char kKraEku[] = "1.3.6.1.4.1.311.21.6";  // szOID_KP_KEY_RECOVERY_AGENT

std::string Rfc3339(time_t t) {
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t MillisSince(SteadyClock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start).count();
}

std::string SerialHex(X509* cert) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn) return "";
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex != nullptr ? AsciiLower(hex) : "";
  OPENSSL_free(hex);
  return out;
}

std::string TimeText(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "";
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Subject(X509* cert) {
  return pki::FormatName(X509_get_subject_name(cert));
}

// TOML basic string.
std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A token label in a PKCS#11 URI path attribute (RFC 7512: pchar, "%XX" otherwise).
std::string UriEscape(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || std::string_view("-._~:[]@!$'()*+,=&").find(static_cast<char>(c)) !=
                               std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// `path` relative to the directory `dir` (both as given or absolute).
std::string RelativeTo(const std::string& path, const std::string& dir) {
  const fs::path abs = fs::absolute(path).lexically_normal();
  const fs::path base = fs::absolute(dir.empty() ? "." : dir).lexically_normal();
  fs::path rel = abs.lexically_relative(base);
  return rel.empty() ? abs.string() : rel.string();
}

std::string DirOf(const std::string& path) {
  const std::string d = fs::path(path).parent_path().string();
  return d.empty() ? "." : d;
}

// The bit length of a certificate's serial, or -1 when negative.
int SerialBits(X509* cert) {
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  if (!bn || BN_is_negative(bn.get())) return -1;
  return BN_num_bits(bn.get());
}

bool ExtensionCritical(X509* cert, int nid) {
  const int at = X509_get_ext_by_NID(cert, nid, -1);
  return at >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, at)) == 1;
}

bool HasEku(X509* cert, const char* oid) {
  ossl::UniquePtr<EXTENDED_KEY_USAGE> eku(static_cast<EXTENDED_KEY_USAGE*>(
      X509_get_ext_d2i(cert, NID_ext_key_usage, nullptr, nullptr)));
  if (!eku) return false;
  for (int i = 0; i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
    char text[128];
    OBJ_obj2txt(text, sizeof text, sk_ASN1_OBJECT_value(eku.get(), i), 1);
    if (std::string_view(text) == oid) return true;
  }
  return false;
}

enum class Profile { kRootCa, kSubordinateCa, kKra };

// Everything a certificate must be before it is written anywhere: v3; a
// positive serial of at least 64 bits; inside its issuer's validity (and
// valid now); the issuer's name; a signature that verifies with the
// issuer's public key (a software copy); keyUsage and basicConstraints
// critical and as the profile says; the KRA EKU for a KRA.
absl::Status CheckProfile(X509* cert_in, X509* issuer_in, Profile profile, int path_length) {
  ossl::UniquePtr<X509> cert = pki::SoftwareCopy(cert_in);
  ossl::UniquePtr<X509> issuer = pki::SoftwareCopy(issuer_in);
  if (!cert || !issuer) return hsm::OpenSslError("certificate check: re-decode");
  const std::string who = StrCat("certificate \"", Subject(cert.get()), "\"");
  auto bad = [&](const std::string& what) {
    ERR_clear_error();
    return absl::InternalError(
        StrCat(who, " fails its profile check: ", what, "; it was not written anywhere"));
  };
  if (X509_get_version(cert.get()) != X509_VERSION_3) return bad("not X.509 v3");
  const int bits = SerialBits(cert.get());
  if (bits < 64) return bad(StrCat("the serial number has ", bits, " bits (at least 64)"));
  if (X509_NAME_cmp(X509_get_issuer_name(cert.get()), X509_get_subject_name(issuer.get())) != 0) {
    return bad("its issuer name is not the CA's subject");
  }
  if (auto st = pki::VerifySignature(cert.get(), X509_get0_pubkey(issuer.get())); !st.ok()) {
    return bad("its signature does not verify with the CA's public key");
  }
  time_t now = time(nullptr);
  if (X509_cmp_time(X509_get0_notBefore(cert.get()), &now) > 0 ||
      X509_cmp_time(X509_get0_notAfter(cert.get()), &now) <= 0) {
    return bad("it is not valid now");
  }
  if (profile != Profile::kRootCa &&
      (ASN1_TIME_compare(X509_get0_notBefore(cert.get()), X509_get0_notBefore(issuer.get())) < 0 ||
       ASN1_TIME_compare(X509_get0_notAfter(cert.get()), X509_get0_notAfter(issuer.get())) > 0)) {
    return bad(StrCat("its validity (", TimeText(X509_get0_notBefore(cert.get())), " to ",
                      TimeText(X509_get0_notAfter(cert.get())), ") is not inside the CA's (",
                      TimeText(X509_get0_notBefore(issuer.get())), " to ",
                      TimeText(X509_get0_notAfter(issuer.get())), ")"));
  }
  if (!ExtensionCritical(cert.get(), NID_key_usage))
    return bad("keyUsage is missing or not critical");
  if (!ExtensionCritical(cert.get(), NID_basic_constraints)) {
    return bad("basicConstraints is missing or not critical");
  }
  if (X509_get_ext_by_NID(cert.get(), NID_subject_key_identifier, -1) < 0) {
    return bad("it has no subjectKeyIdentifier");
  }
  const uint32_t ku = X509_get_key_usage(cert.get());
  const bool is_ca =
      X509_check_ca(cert.get()) == 1 && (X509_get_extension_flags(cert.get()) & EXFLAG_CA) != 0;
  if (profile == Profile::kKra) {
    if (is_ca) return bad("a KRA certificate must have basicConstraints CA:FALSE");
    if ((ku & KU_KEY_ENCIPHERMENT) == 0) return bad("keyUsage lacks keyEncipherment");
    if ((ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) != 0) {
      return bad("a KRA certificate may not sign certificates or CRLs");
    }
    if (!HasEku(cert.get(), kKraEku)) {
      return bad(StrCat("extendedKeyUsage lacks Key Recovery Agent (", kKraEku, ")"));
    }
    if (!EVP_PKEY_is_a(X509_get0_pubkey(cert.get()), "RSA")) {
      return bad("a KRA key must be RSA (key transport)");
    }
  } else {
    if (!is_ca) return bad("basicConstraints is not CA:TRUE");
    if ((ku & KU_KEY_CERT_SIGN) == 0 || (ku & KU_CRL_SIGN) == 0) {
      return bad("keyUsage lacks keyCertSign or cRLSign");
    }
    if (profile == Profile::kRootCa && X509_get_pathlen(cert.get()) != path_length) {
      return bad(StrCat("pathLenConstraint is ", X509_get_pathlen(cert.get()), ", the file asks ",
                        path_length));
    }
  }
  if (profile != Profile::kRootCa &&
      X509_get_ext_by_NID(cert.get(), NID_authority_key_identifier, -1) < 0) {
    return bad("it has no authorityKeyIdentifier");
  }
  return absl::OkStatus();
}

// The private key is sensitive and not extractable, as read back from the token.
absl::StatusOr<json> CheckKeyStaysOnToken(const hsm::TokenKey& key) {
  auto session = key.token->Acquire();
  if (!session.ok()) return session.status();
  json attrs = json::object();
  for (auto [type, name] :
       {std::pair{CKA_SENSITIVE, "sensitive"}, std::pair{CKA_EXTRACTABLE, "extractable"},
        std::pair{CKA_ALWAYS_SENSITIVE, "always_sensitive"},
        std::pair{CKA_NEVER_EXTRACTABLE, "never_extractable"}}) {
    auto v = hsm::GetAttribute(*session, key.private_handle, type);
    if (!v.ok() || v->size() != 1) {
      return absl::InternalError(StrCat(key.Describe(), ": cannot read attribute ", name));
    }
    attrs[name] = (*v)[0] == CK_TRUE;
  }
  if (!attrs["sensitive"].get<bool>() || attrs["extractable"].get<bool>() ||
      !attrs["never_extractable"].get<bool>()) {
    return absl::InternalError(StrCat(key.Describe(), " is not sensitive and never extractable (",
                                      attrs.dump(), "); stop and investigate the token"));
  }
  return attrs;
}

absl::StatusOr<ossl::UniquePtr<X509>> MakeKraCertificate(OSSL_LIB_CTX* libctx, hsm::Token& ca_token,
                                                         EVP_PKEY* ca_key, X509* ca_cert,
                                                         const std::string& subject,
                                                         EVP_PKEY* kra_public, int days,
                                                         const pki::SignatureOptions& signature) {
  auto name = pki::ParseName(subject);
  if (!name.ok()) return name.status();
  auto serial = pki::TokenRandomSerial(ca_token);
  if (!serial.ok()) return serial.status();
  ossl::UniquePtr<X509> cert(X509_new_ex(libctx, nullptr));
  if (!cert || !X509_set_version(cert.get(), X509_VERSION_3) ||
      !X509_set_serialNumber(cert.get(), serial->get()) ||
      !X509_set_subject_name(cert.get(), name->get()) ||
      !X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert)) ||
      !X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, 0, nullptr) ||
      !X509_set_pubkey(cert.get(), kra_public)) {
    return hsm::OpenSslError("KRA certificate: fields");
  }
  if (ASN1_TIME_compare(X509_get0_notAfter(cert.get()), X509_get0_notAfter(ca_cert)) > 0) {
    return absl::FailedPreconditionError(
        StrCat("a KRA certificate of ", days, " days would outlive the CA certificate (",
               TimeText(X509_get0_notAfter(ca_cert)), "): shorten [kra] validity_days"));
  }
  if (!pki::AddExtension(cert.get(), ca_cert, NID_basic_constraints, "critical,CA:FALSE") ||
      !pki::AddExtension(cert.get(), ca_cert, NID_key_usage, "critical,keyEncipherment") ||
      !pki::AddExtension(cert.get(), ca_cert, NID_ext_key_usage, kKraEku) ||
      !pki::AddExtension(cert.get(), ca_cert, NID_subject_key_identifier, "hash") ||
      !pki::AddExtension(cert.get(), ca_cert, NID_authority_key_identifier, "keyid:always")) {
    return hsm::OpenSslError("KRA certificate: extensions");
  }
  if (auto st = pki::SignCertificate(libctx, cert.get(), ca_key, signature); !st.ok()) return st;
  return cert;
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

// An output must not exist (not even as a dangling link); the nearest
// existing directory above it must be writable (missing ones are made).
absl::Status CheckOutput(const std::string& path) {
  std::error_code ec;
  if (fs::symlink_status(path, ec).type() != fs::file_type::not_found) {
    return absl::AlreadyExistsError(
        StrCat("refusing to run: the output ", path, " exists (a ceremony never overwrites)"));
  }
  fs::path dir = fs::absolute(path).parent_path();
  while (!dir.empty() && !fs::exists(dir, ec) && dir != dir.parent_path()) dir = dir.parent_path();
  if (!fs::is_directory(dir, ec) || access(dir.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(StrCat("refusing to run: cannot write ", path, " (",
                                              dir.string(), " is not a writable directory)"));
  }
  return absl::OkStatus();
}

// One token, logged in with its holder's PIN.
struct OpenedToken {
  std::string uri, holder;
  std::shared_ptr<hsm::Token> token;
};

absl::StatusOr<OpenedToken> OpenAndLogin(const std::string& uri_text, const std::string& module,
                                         const PinPlan& pins, const std::string& holder) {
  auto uri = hsm::Pkcs11Uri::Parse(uri_text);
  if (!uri.ok()) return uri.status();
  hsm::OpenOptions open;
  open.default_module = module;
  auto token = hsm::OpenToken(*uri, open);
  if (!token.ok()) return token.status();
  auto pin = pins.For((*token)->label(), holder);
  if (!pin.ok()) return pin.status();
  auto value = pin->Read();
  if (!value.ok()) {
    return absl::Status(
        value.status().code(),
        StrCat("PIN of token \"", (*token)->label(), "\" (", holder,
               "): ", value.status().message(),
               ". A ceremony asks each holder on the terminal; --automation-pin LABEL=file:PATH "
               "exists for tests and CI only"));
  }
  if (auto st = (*token)->Login(*value); !st.ok()) return st;
  return OpenedToken{uri_text, holder, std::move(*token)};
}

// What one run has done so far: for the transcript, and for the message
// when a step fails (what was already made, so the operator can clean up).
class Run {
 public:
  Run(const CeremonySpec& spec, const RunOptions& options) : spec_(spec), options_(options) {
    transcript_dir_ = DirOf(spec.transcript);
  }

  void Start(const std::string& step, const std::string& what) {
    step_ = step;
    step_start_ = SteadyClock::now();
    step_started_at_ = time(nullptr);
    if (options_.progress) options_.progress(step, what);
  }
  void Done(json details) {
    details["step"] = step_;
    details["started_at"] = Rfc3339(step_started_at_);
    details["duration_ms"] = MillisSince(step_start_);
    steps_.push_back(std::move(details));
    done_.push_back(step_);
  }
  absl::Status Fail(const absl::Status& st) const {
    std::string msg = StrCat("ceremony step \"", step_, "\" failed: ", st.message());
    if (!done_.empty()) msg += StrCat("\nSteps completed before it: ", StrJoin(done_, ", "));
    if (!created_.empty()) {
      msg += StrCat(
          "\nAlready made (the ceremony does not undo them; review and remove them "
          "before running again):\n  ",
          StrJoin(created_, "\n  "));
    } else {
      msg += "\nNothing was written to any token or file.";
    }
    return absl::Status(st.code(), msg);
  }
  void Created(const std::string& what) { created_.push_back(what); }

  // Writes an output (refusing an existing file) and records its hash.
  absl::Status Write(const std::string& path, const std::string& data, const std::string& kind) {
    std::error_code ec;
    fs::create_directories(DirOf(path), ec);
    if (auto st = pki::WriteFileAtomically(path, data, pki::Overwrite::kRefuse); !st.ok()) {
      return st;
    }
    Created(StrCat("file ", path));
    outputs_.push_back({{"path", RelativeTo(path, transcript_dir_)},
                        {"kind", kind},
                        {"sha256", pki::Sha256Hex(Bytes(data))}});
    return absl::OkStatus();
  }
  std::string Rel(const std::string& path) const { return RelativeTo(path, transcript_dir_); }

  json& steps() { return steps_; }
  json& outputs() { return outputs_; }

 private:
  const CeremonySpec& spec_;
  const RunOptions& options_;
  std::string transcript_dir_;
  std::string step_;
  SteadyClock::time_point step_start_;
  time_t step_started_at_ = 0;
  json steps_ = json::array();
  json outputs_ = json::array();
  std::vector<std::string> done_, created_;
};

json TokenJson(const hsm::Token& t) {
  return {{"label", t.label()},
          {"serial", t.serial()},
          {"manufacturer", t.info().manufacturer},
          {"model", t.info().model}};
}

json KeyJson(const hsm::TokenKey& key, hsm::KeyAlgorithm algorithm) {
  return {{"label", key.label},
          {"id", HexString(key.id)},
          {"algorithm", hsm::KeyAlgorithmName(algorithm)},
          {"spki_sha256", pki::SpkiSha256(key.public_key.get())}};
}

json CertJson(X509* cert) {
  return {{"subject", Subject(cert)},
          {"issuer", pki::FormatName(X509_get_issuer_name(cert))},
          {"serial", SerialHex(cert)},
          {"serial_bits", SerialBits(cert)},
          {"not_before", TimeText(X509_get0_notBefore(cert))},
          {"not_after", TimeText(X509_get0_notAfter(cert))},
          {"sha1", pki::Sha1Thumbprint(cert)},
          {"sha256", pki::Sha256Thumbprint(cert)}};
}

// The daemon's configuration for what the ceremony made.
std::string Fragment(const CeremonySpec& spec, const std::string& module, const hsm::Token& ca,
                     const std::string& ca_name, const std::vector<std::string>& kra_files) {
  const std::string dir = DirOf(spec.config.fragment);
  std::string t = StrCat(
      "# keywardend configuration written by `keywarden ceremony run` for the "
      "ceremony \"",
      spec.name, "\" (", Rfc3339(time(nullptr)),
      ").\n# Paste these tables into keywarden.toml beside [database], "
      "[server] and the rest.\n# Paths are relative to this file's "
      "directory.\n\n[ca]\n");
  t += StrCat("name = ", Quote(ca_name),
              "\ncertificate = ", Quote(RelativeTo(spec.ca.certificate, dir)), "\n");
  if (!spec.ca.chain.empty()) t += StrCat("chain = ", Quote(RelativeTo(spec.ca.chain, dir)), "\n");
  t += StrCat(
      "# The signed record of the ceremony: keywardend records the KRA certificates it\n"
      "# lists (issued by the CA key before the CA had a database).\n"
      "ceremony_transcript = ",
      Quote(RelativeTo(spec.transcript, dir)), "\n\n[hsm]\n");
  if (!module.empty()) t += StrCat("module = ", Quote(module), "\n");
  const std::string token = StrCat("pkcs11:token=", UriEscape(ca.label()));
  t += StrCat("token = ", Quote(token), "\npin_source = ", Quote(spec.config.hsm_pin_source),
              "\nsigning_key = ",
              Quote(StrCat(token, ";object=", UriEscape(spec.ca.key_label), ";type=private")),
              "\n\n[kra]\ncertificates = [\n");
  for (const std::string& f : kra_files) t += StrCat("  ", Quote(RelativeTo(f, dir)), ",\n");
  t += StrCat("]\ncount = ", spec.kra.count, "\n");
  if (spec.kra.archival_scheme != "des3-rsa-pkcs1") {
    t += StrCat(
        "\n# The round-trip proof used this scheme; set it in [flags]:\n"
        "# archival_scheme = ",
        Quote(spec.kra.archival_scheme), "\n");
  }
  return t;
}

}  // namespace

absl::StatusOr<hsm::PinSource> PinPlan::For(const std::string& label,
                                            const std::string& holder) const {
  auto it = automation.find(label);
  if (it == automation.end()) {
    return hsm::PinSource::Prompt(StrCat("PIN of token \"", label, "\" (", holder, "): "));
  }
  if (!it->second.starts_with("file:") && !it->second.starts_with("env:")) {
    return absl::InvalidArgumentError(
        StrCat("--automation-pin ", label, "=...: give file:PATH or env:NAME"));
  }
  return hsm::PinSource::Parse(it->second);
}

absl::StatusOr<json> ProveRoundTrip(const ProofInput& in) {
  if (in.kra_certificates.empty() || in.cards.empty()) {
    return absl::InvalidArgumentError("round-trip proof: no KRA certificate or card");
  }
  // The throwaway key and a self-signed certificate for it (never issued by the CA).
  ossl::UniquePtr<EVP_PKEY> user(EVP_RSA_gen(2048));
  auto name = pki::ParseName("CN=keywarden ceremony round-trip proof (throwaway key)");
  auto serial = pki::RandomSerial();
  ossl::UniquePtr<X509> user_cert(X509_new());
  if (!user || !name.ok() || !serial.ok() || !user_cert ||
      !X509_set_version(user_cert.get(), X509_VERSION_3) ||
      !X509_set_serialNumber(user_cert.get(), serial->get()) ||
      !X509_set_subject_name(user_cert.get(), name->get()) ||
      !X509_set_issuer_name(user_cert.get(), name->get()) ||
      !X509_gmtime_adj(X509_getm_notBefore(user_cert.get()), 0) ||
      !X509_gmtime_adj(X509_getm_notAfter(user_cert.get()), 3600) ||
      !X509_set_pubkey(user_cert.get(), user.get())) {
    return hsm::OpenSslError("round-trip proof: the throwaway key and certificate");
  }
  if (auto st = pki::SignCertificate(nullptr, user_cert.get(), user.get(), {}); !st.ok()) return st;

  // Archived as keywardend archives: the daemon's code, on the CA token.
  auto pkcs8 = pki::ToPkcs8(user.get());
  if (!pkcs8.ok()) return pkcs8.status();
  auto envelope = pki::EnvelopeToKras(in.ca_token, *pkcs8, in.kra_certificates, in.scheme);
  if (!envelope.ok()) {
    return absl::Status(envelope.status().code(),
                        StrCat("round-trip proof: archiving the throwaway key to the KRAs: ",
                               envelope.status().message()));
  }
  // Retrieved as getkey retrieves it: a recovery blob signed by the CA key.
  pki::RecoveryBlobInput blob_in;
  blob_in.ca_key = in.ca_key;
  blob_in.ca_certificate = in.ca_certificate;
  blob_in.ca_chain = in.ca_chain;
  blob_in.user_certificate = user_cert.get();
  blob_in.kra_certificates = in.kra_certificates;
  blob_in.enveloped_data = *envelope;
  auto blob = pki::BuildRecoveryBlob(in.libctx, hsm::kTokenKeyProperties, blob_in);
  if (!blob.ok()) {
    return absl::Status(blob.status().code(),
                        StrCat("round-trip proof: the recovery blob: ", blob.status().message()));
  }
  std::vector<ossl::UniquePtr<X509>> anchors;
  anchors.push_back(pki::SoftwareCopy(in.ca_certificate));
  auto parsed = pki::ParseRecoveryBlob(*blob, anchors);
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(), StrCat("round-trip proof: the recovery blob "
                                                       "does not open: ",
                                                       parsed.status().message()));
  }
  json result = {{"scheme", pki::ArchivalSchemeName(in.scheme)},
                 {"throwaway_key", "RSA-2048, made in memory and discarded"},
                 {"throwaway_spki_sha256", pki::SpkiSha256(user.get())},
                 {"envelope_sha256", pki::Sha256Hex(*envelope)},
                 {"recovery_blob_sha256", pki::Sha256Hex(*blob)},
                 {"content_cipher", parsed->content_cipher},
                 {"recipients", parsed->recipients.size()}};
  json cards = json::array();
  for (const ProofCard& c : in.cards) {
    const std::string who = StrCat("card \"", c.token->label(), "\" (", c.holder, ")");
    auto card = pki::KraCard::FromToken(c.token);
    if (!card.ok()) return card.status();
    pki::RecoveryTiming timing;
    auto recovered = (*card)->Recover(*parsed, &timing);
    if (!recovered.ok()) {
      return absl::Status(recovered.status().code(),
                          StrCat("round-trip proof: ", who, " did not recover the throwaway key: ",
                                 recovered.status().message()));
    }
    if (EVP_PKEY_eq(recovered->key.get(), user.get()) != 1) {
      ERR_clear_error();
      return absl::DataLossError(
          StrCat("round-trip proof: ", who, " recovered a key that is not the throwaway key"));
    }
    cards.push_back({{"card", c.token->label()},
                     {"holder", c.holder},
                     {"kra_sha1", pki::Sha1Thumbprint(recovered->kra->certificate.get())},
                     {"recovered", true},
                     {"card_ms", static_cast<int64_t>(timing.card * 1000)}});
  }
  result["cards"] = std::move(cards);
  return result;
}

absl::StatusOr<RunResult> RunCeremony(const CeremonySpec& spec, const RunOptions& options) {
  Run run(spec, options);
  const time_t started = time(nullptr);
  const std::string module = !spec.ca.module.empty() ? spec.ca.module : options.default_module;
  const bool makes_key = spec.kind != Kind::kSubordinateInstall;
  const bool with_kras = spec.kind != Kind::kSubordinate;

  // ---- preflight: nothing is written to a token or a file here.
  run.Start("preflight", "checking outputs, tokens and key labels");
  json pre = json::object();
  for (const std::string& out : spec.Outputs()) {
    if (auto st = CheckOutput(out); !st.ok()) return run.Fail(st);
  }
  pre["outputs_checked"] = spec.Outputs().size();
  std::vector<ossl::UniquePtr<X509>> issued, parent_chain;
  if (spec.kind == Kind::kSubordinateInstall) {
    auto certs = pki::ReadPemCertificates(spec.ca.issued_certificate);
    if (!certs.ok()) return run.Fail(certs.status());
    issued = std::move(*certs);
    auto chain = pki::ReadPemCertificates(spec.ca.parent_chain);
    if (!chain.ok()) return run.Fail(chain.status());
    parent_chain = std::move(*chain);
  }
  auto ca = OpenAndLogin(spec.ca.token, module, options.pins, "CA token");
  if (!ca.ok()) return run.Fail(ca.status());
  std::shared_ptr<hsm::Token> ca_token = ca->token;
  std::shared_ptr<hsm::TokenKey> ca_key;
  {
    auto session = ca_token->Acquire();
    if (!session.ok()) return run.Fail(session.status());
    if (makes_key && hsm::LabelInUse(*session, spec.ca.key_label)) {
      return run.Fail(
          absl::AlreadyExistsError(StrCat("refusing to run: key label \"", spec.ca.key_label,
                                          "\" is taken on token \"", ca_token->label(), "\"")));
    }
    if (!makes_key && hsm::LabelInUse(*session, spec.ca.key_label, CKO_CERTIFICATE)) {
      return run.Fail(absl::AlreadyExistsError(
          StrCat("refusing to run: token \"", ca_token->label(),
                 "\" already holds a certificate labelled \"", spec.ca.key_label, "\"")));
    }
  }
  if (!makes_key) {
    auto key = hsm::FindPrivateKey(ca_token, spec.ca.key_label);
    if (!key.ok()) return run.Fail(key.status());
    ca_key = *key;
    if (auto st = pki::CheckSubordinateCertificate(issued.front().get(), ca_key->public_key.get(),
                                                   parent_chain);
        !st.ok()) {
      return run.Fail(st);
    }
  }
  pre["ca_token"] = TokenJson(*ca_token);
  std::vector<OpenedToken> cards;
  json card_list = json::array();
  if (with_kras) {
    for (const CardSpec& c : spec.kra.cards) {
      auto card = OpenAndLogin(c.token, module, options.pins, StrCat("KRA ", c.holder));
      if (!card.ok()) return run.Fail(card.status());
      const hsm::Token& t = *card->token;
      if (t.serial() == ca_token->serial() && t.label() == ca_token->label()) {
        return run.Fail(absl::InvalidArgumentError(
            StrCat("KRA card ", c.token, " is the CA token: a KRA key goes on its own card")));
      }
      for (const OpenedToken& other : cards) {
        if (other.token->serial() == t.serial() && other.token->label() == t.label()) {
          return run.Fail(absl::InvalidArgumentError(
              StrCat(c.token, " and ", other.uri, " are the same card")));
        }
      }
      auto session = card->token->Acquire();
      if (!session.ok()) return run.Fail(session.status());
      if (hsm::LabelInUse(*session, c.key_label)) {
        return run.Fail(absl::AlreadyExistsError(StrCat("refusing to run: key label \"",
                                                        c.key_label, "\" is taken on card \"",
                                                        t.label(), "\" (", c.holder, ")")));
      }
      json j = TokenJson(t);
      j["holder"] = c.holder;
      card_list.push_back(std::move(j));
      cards.push_back(std::move(*card));
    }
  }
  pre["cards"] = std::move(card_list);
  run.Done(std::move(pre));

  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return run.Fail(crypto.status());
  const pki::SignatureOptions signature{spec.ca.digest, spec.ca.pss};

  // ---- the CA key.
  hsm::KeyAlgorithm ca_algorithm = hsm::KeyAlgorithm::kRsa3072;
  if (makes_key) {
    run.Start("ca-key", StrCat("generating the CA key \"", spec.ca.key_label, "\" on token \"",
                               ca_token->label(), "\""));
    auto algorithm = hsm::ParseKeyAlgorithm(spec.ca.key_algorithm);
    if (!algorithm.ok()) return run.Fail(algorithm.status());
    ca_algorithm = *algorithm;
    hsm::KeySpec key_spec;
    key_spec.algorithm = ca_algorithm;
    key_spec.label = spec.ca.key_label;
    key_spec.usage.sign = true;
    auto key = hsm::GenerateKeyPair(ca_token, key_spec);
    if (!key.ok()) return run.Fail(key.status());
    ca_key = *key;
    run.Created(
        StrCat("key pair \"", spec.ca.key_label, "\" on token \"", ca_token->label(), "\""));
  } else {
    run.Start("ca-key", StrCat("finding the CA key \"", spec.ca.key_label, "\""));
    ca_algorithm =
        ca_key->type == hsm::KeyType::kEc
            ? (ca_key->bits > 256 ? hsm::KeyAlgorithm::kEcP384 : hsm::KeyAlgorithm::kEcP256)
            : (ca_key->bits > 3072   ? hsm::KeyAlgorithm::kRsa4096
               : ca_key->bits > 2048 ? hsm::KeyAlgorithm::kRsa3072
                                     : hsm::KeyAlgorithm::kRsa2048);
  }
  auto attrs = CheckKeyStaysOnToken(*ca_key);
  if (!attrs.ok()) return run.Fail(attrs.status());
  auto ca_pkey = (*crypto)->Load(ca_key);
  if (!ca_pkey.ok()) return run.Fail(ca_pkey.status());
  json key_step = {{"token", TokenJson(*ca_token)},
                   {"key", KeyJson(*ca_key, ca_algorithm)},
                   {"attributes", *attrs},
                   {"generated", makes_key}};
  run.Done(std::move(key_step));

  // ---- the CA certificate (root / install) or request (subordinate).
  ossl::UniquePtr<X509> ca_cert;
  json signer;
  if (spec.kind == Kind::kRoot) {
    run.Start("root-certificate", "signing the self-signed root on the token");
    auto subject = pki::ParseName(spec.ca.subject);
    if (!subject.ok()) return run.Fail(subject.status());
    auto serial = pki::TokenRandomSerial(*ca_token);
    if (!serial.ok()) return run.Fail(serial.status());
    pki::RootCaOptions root;
    root.subject = subject->get();
    root.validity_days = spec.ca.validity_days;
    root.path_length = spec.ca.path_length;
    root.signature = signature;
    root.serial = serial->get();
    auto cert = pki::MakeSelfSignedRoot((*crypto)->libctx(), ca_pkey->get(), root);
    if (!cert.ok()) return run.Fail(cert.status());
    if (auto st = CheckProfile(cert->get(), cert->get(), Profile::kRootCa, spec.ca.path_length);
        !st.ok()) {
      return run.Fail(st);
    }
    auto stored = hsm::ImportCertificate(*ca_token, cert->get(), spec.ca.key_label, ca_key->id);
    if (!stored.ok()) return run.Fail(stored.status());
    run.Created(
        StrCat("certificate \"", spec.ca.key_label, "\" on token \"", ca_token->label(), "\""));
    if (auto st = run.Write(spec.ca.certificate, pki::ToPem(cert->get()), "ca-certificate");
        !st.ok()) {
      return run.Fail(st);
    }
    ca_cert = std::move(*cert);
    run.Done({{"certificate", CertJson(ca_cert.get())},
              {"file", run.Rel(spec.ca.certificate)},
              {"serial_source", "CA token RNG (C_GenerateRandom)"},
              {"signature_verified", true},
              {"profile_checked", "root CA"},
              {"stored_on_token", true}});
    signer = {{"path", run.Rel(spec.ca.certificate)}, {"kind", "certificate"}};
  } else if (spec.kind == Kind::kSubordinate) {
    run.Start("request", "signing the request for the parent CA on the token");
    auto subject = pki::ParseName(spec.ca.subject);
    if (!subject.ok()) return run.Fail(subject.status());
    auto req = pki::MakeCaRequest((*crypto)->libctx(), ca_pkey->get(), subject->get(), signature);
    if (!req.ok()) return run.Fail(req.status());
    if (auto st = run.Write(spec.ca.request, pki::ToPem(req->get()), "ca-request"); !st.ok()) {
      return run.Fail(st);
    }
    run.Done({{"subject", spec.ca.subject},
              {"file", run.Rel(spec.ca.request)},
              {"signature_verified", true}});
    signer = {{"path", run.Rel(spec.ca.request)}, {"kind", "request"}};
  } else {
    run.Start("install", "checking and storing the parent CA's certificate");
    X509* cert = issued.front().get();
    X509* parent = parent_chain.front().get();
    if (auto st = CheckProfile(cert, parent, Profile::kSubordinateCa, -1); !st.ok()) {
      return run.Fail(st);
    }
    auto stored = hsm::ImportCertificate(*ca_token, cert, spec.ca.key_label, ca_key->id);
    if (!stored.ok()) return run.Fail(stored.status());
    run.Created(
        StrCat("certificate \"", spec.ca.key_label, "\" on token \"", ca_token->label(), "\""));
    if (auto st = run.Write(spec.ca.certificate, pki::ToPem(cert), "ca-certificate"); !st.ok()) {
      return run.Fail(st);
    }
    std::string chain_pem;
    for (const auto& c : parent_chain) chain_pem += pki::ToPem(c.get());
    if (auto st = run.Write(spec.ca.chain, chain_pem, "ca-chain"); !st.ok()) return run.Fail(st);
    ca_cert = pki::SoftwareCopy(cert);
    json chain = json::array();
    for (const auto& c : parent_chain) chain.push_back(CertJson(c.get()));
    run.Done({{"certificate", CertJson(cert)},
              {"chain", std::move(chain)},
              {"file", run.Rel(spec.ca.certificate)},
              {"chain_file", run.Rel(spec.ca.chain)},
              {"chain_verified", true},
              {"profile_checked", "subordinate CA"},
              {"stored_on_token", true}});
    signer = {{"path", run.Rel(spec.ca.certificate)}, {"kind", "certificate"}};
  }

  // ---- KRA keys on the cards, certified by the CA key.
  std::vector<ossl::UniquePtr<X509>> kra_certs;
  std::vector<std::string> kra_files;
  if (with_kras) {
    auto kra_algorithm = hsm::ParseKeyAlgorithm(spec.kra.key_algorithm);
    if (!kra_algorithm.ok()) return run.Fail(kra_algorithm.status());
    for (size_t i = 0; i < cards.size(); ++i) {
      const CardSpec& c = spec.kra.cards[i];
      const std::shared_ptr<hsm::Token>& card = cards[i].token;
      run.Start(StrCat("kra-", i + 1), StrCat("KRA key on card \"", card->label(), "\" (", c.holder,
                                              ") and its certificate"));
      hsm::KeySpec key_spec;
      key_spec.algorithm = *kra_algorithm;
      key_spec.label = c.key_label;
      key_spec.usage.sign = false;
      key_spec.usage.decrypt = true;
      auto key = hsm::GenerateKeyPair(card, key_spec);
      if (!key.ok()) return run.Fail(key.status());
      run.Created(StrCat("key pair \"", c.key_label, "\" on card \"", card->label(), "\""));
      auto card_attrs = CheckKeyStaysOnToken(**key);
      if (!card_attrs.ok()) return run.Fail(card_attrs.status());
      auto cert = MakeKraCertificate((*crypto)->libctx(), *ca_token, ca_pkey->get(), ca_cert.get(),
                                     c.subject, (*key)->public_key.get(), spec.kra.validity_days,
                                     signature);
      if (!cert.ok()) return run.Fail(cert.status());
      if (auto st = CheckProfile(cert->get(), ca_cert.get(), Profile::kKra, -1); !st.ok()) {
        return run.Fail(st);
      }
      auto stored = hsm::ImportCertificate(*card, cert->get(), c.key_label, (*key)->id);
      if (!stored.ok()) return run.Fail(stored.status());
      run.Created(StrCat("certificate \"", c.key_label, "\" on card \"", card->label(), "\""));
      if (auto st = run.Write(c.certificate, pki::ToPem(cert->get()), "kra-certificate");
          !st.ok()) {
        return run.Fail(st);
      }
      ossl::UniquePtr<X509> soft = pki::SoftwareCopy(cert->get());
      run.Done({{"card", TokenJson(*card)},
                {"holder", c.holder},
                {"key", KeyJson(**key, *kra_algorithm)},
                {"attributes", *card_attrs},
                {"certificate", CertJson(soft.get())},
                {"file", run.Rel(c.certificate)},
                {"serial_source", "CA token RNG (C_GenerateRandom)"},
                {"signature_verified", true},
                {"profile_checked", "Key Recovery Agent"},
                {"stored_on_card", true}});
      kra_certs.push_back(std::move(soft));
      kra_files.push_back(c.certificate);
    }

    // ---- the daemon's configuration.
    run.Start("config", "writing the [ca], [hsm] and [kra] fragment");
    if (auto st = run.Write(spec.config.fragment,
                            Fragment(spec, module, *ca_token, spec.ca.name, kra_files),
                            "config-fragment");
        !st.ok()) {
      return run.Fail(st);
    }
    run.Done({{"file", run.Rel(spec.config.fragment)}});

    // ---- the round-trip proof.
    run.Start("round-trip-proof",
              "archiving a throwaway key to the new KRAs and recovering it with each card");
    auto scheme = pki::ParseArchivalScheme(spec.kra.archival_scheme);
    if (!scheme.ok()) return run.Fail(scheme.status());
    ProofInput proof;
    proof.ca_token = ca_token;
    proof.libctx = (*crypto)->libctx();
    proof.ca_key = ca_pkey->get();
    proof.ca_certificate = ca_cert.get();
    for (const auto& c : parent_chain) proof.ca_chain.push_back(c.get());
    for (const auto& c : kra_certs) proof.kra_certificates.push_back(c.get());
    for (size_t i = 0; i < cards.size(); ++i) {
      proof.cards.push_back({spec.kra.cards[i].holder, cards[i].token});
    }
    proof.scheme = *scheme;
    auto proved = ProveRoundTrip(proof);
    if (!proved.ok()) return run.Fail(proved.status());
    run.Done(std::move(*proved));
  }

  // ---- the transcript, signed by the CA key.
  run.Start("transcript", "signing the transcript with the CA key");
  json body = {
      {"ceremony",
       {{"name", spec.name},
        {"kind", std::string(KindName(spec.kind))},
        {"file", run.Rel(spec.path)},
        {"file_sha256", spec.sha256}}},
      {"witnesses", spec.witnesses},
      {"started_at", Rfc3339(started)},
      {"finished_at", Rfc3339(time(nullptr))},
      {"steps", run.steps()},
      {"outputs", run.outputs()},
      {"signer", signer},
  };
  ossl::UniquePtr<EVP_PKEY> ca_public(EVP_PKEY_dup(ca_key->public_key.get()));
  auto text = pki::SignTranscript(body, (*crypto)->libctx(), hsm::kTokenKeyProperties,
                                  ca_pkey->get(), ca_public.get(), signature);
  if (!text.ok()) return run.Fail(text.status());
  {
    std::error_code ec;
    fs::create_directories(DirOf(spec.transcript), ec);
    if (auto st = pki::WriteFileAtomically(spec.transcript, *text, pki::Overwrite::kRefuse);
        !st.ok()) {
      return run.Fail(st);
    }
  }

  RunResult result;
  result.transcript = body;
  std::string summary = StrCat("Ceremony \"", spec.name, "\" (", KindName(spec.kind),
                               ") complete. Witnesses: ", StrJoin(spec.witnesses, ", "), "\n");
  for (const json& s : run.steps()) {
    summary +=
        StrCat("  ", s["step"].get<std::string>(), " (", s["duration_ms"].get<int64_t>(), " ms)\n");
  }
  summary += "Outputs (SHA-256):\n";
  for (const json& o : run.outputs()) {
    summary +=
        StrCat("  ", o["sha256"].get<std::string>(), "  ", o["path"].get<std::string>(), "\n");
  }
  summary += StrCat("Transcript: ", spec.transcript,
                    " (signed by the CA key; check it with `keywarden ceremony verify ",
                    spec.transcript, "`)\n");
  result.text = std::move(summary);
  return result;
}

}  // namespace keywarden::ceremony
