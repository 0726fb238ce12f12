#include "pki/ceremony_transcript.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <filesystem>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/der.h"
#include "pki/files.h"
#include "pki/pkcs10.h"

namespace keywarden::pki {
namespace {

using json = nlohmann::json;

// Transcripts are small: a larger file is not one.
constexpr size_t kMaxTranscriptBytes = 4 << 20;

std::string PaddingOf(EVP_PKEY* key, bool pss) {
  if (!EVP_PKEY_is_a(key, "RSA")) return "ecdsa";
  return pss ? "pss" : "pkcs1";
}

// Sets up `ctx` for signing (`sign`) or verifying with `key`.
absl::Status InitDigest(EVP_MD_CTX* ctx, bool sign, const std::string& digest,
                        const std::string& padding, OSSL_LIB_CTX* libctx, const char* propq,
                        EVP_PKEY* key) {
  EVP_PKEY_CTX* pctx = nullptr;
  const int rc =
      sign ? EVP_DigestSignInit_ex(ctx, &pctx, digest.c_str(), libctx, propq, key, nullptr)
           : EVP_DigestVerifyInit_ex(ctx, &pctx, digest.c_str(), libctx, propq, key, nullptr);
  if (rc != 1) return hsm::OpenSslError(StrCat("transcript signature (", digest, ")"));
  if (padding == "pss" && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)) {
    return hsm::OpenSslError("transcript signature: RSASSA-PSS parameters");
  }
  return absl::OkStatus();
}

bool VerifyBytes(const std::string& data, const std::vector<uint8_t>& signature,
                 const std::string& digest, const std::string& padding, EVP_PKEY* public_key) {
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  if (!ctx || !InitDigest(ctx.get(), false, digest, padding, nullptr, nullptr, public_key).ok()) {
    ERR_clear_error();
    return false;
  }
  const bool ok =
      EVP_DigestVerify(ctx.get(), signature.data(), signature.size(),
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  ERR_clear_error();
  return ok;
}

bool IsAllowedDigest(const std::string& d) {
  return d == "SHA256" || d == "SHA384" || d == "SHA512";
}

}  // namespace

absl::StatusOr<std::string> SignTranscript(const json& body, OSSL_LIB_CTX* libctx,
                                           const char* propq, EVP_PKEY* key, EVP_PKEY* public_key,
                                           const SignatureOptions& signature) {
  if (!body.is_object() || !body.contains("outputs") || !body.contains("signer")) {
    return absl::InvalidArgumentError("transcript: outputs and signer are required");
  }
  if (!IsAllowedDigest(signature.digest)) {
    return absl::InvalidArgumentError(
        StrCat("transcript: digest ", signature.digest, " is not SHA256, SHA384 or SHA512"));
  }
  const std::string text = body.dump();
  const std::string padding = PaddingOf(public_key, signature.rsa_pss);
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  if (!ctx) return hsm::OpenSslError("transcript signature");
  if (auto st = InitDigest(ctx.get(), true, signature.digest, padding, libctx, propq, key);
      !st.ok()) {
    return st;
  }
  size_t len = 0;
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, data, text.size()) != 1) {
    return hsm::OpenSslError("transcript signature: size");
  }
  std::vector<uint8_t> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, data, text.size()) != 1) {
    return hsm::OpenSslError("transcript signature on the token");
  }
  sig.resize(len);
  // Checked right after it is made, with the software public key.
  if (!VerifyBytes(text, sig, signature.digest, padding, public_key)) {
    return absl::InternalError(
        "transcript signature: the token's signature does not verify with the CA's public key "
        "(a token fault); nothing was written");
  }
  json file = {
      {"format", kTranscriptFormat},
      {"transcript", body},
      {"signature",
       {{"digest", signature.digest}, {"padding", padding}, {"value", Base64Encode(sig)}}}};
  return file.dump(2) + "\n";
}

absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> SignerPublicKey(const std::string& path,
                                                          const std::string& kind) {
  auto bytes = ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) return bytes.status();
  if (kind == "certificate") {
    auto certs = ParsePemCertificates(*bytes);
    if (certs.empty()) {
      return absl::InvalidArgumentError(StrCat(path, " holds no PEM certificate"));
    }
    return ossl::UniquePtr<EVP_PKEY>(EVP_PKEY_dup(X509_get0_pubkey(certs.front().get())));
  }
  if (kind == "request") {
    auto req = ParsePkcs10(*bytes);
    if (!req.ok()) {
      return absl::InvalidArgumentError(
          StrCat(path, " is not a PKCS#10 request: ", req.status().message()));
    }
    EVP_PKEY* pub = req->public_key();
    if (pub == nullptr) return hsm::OpenSslError(StrCat(path, ": the request's public key"));
    return ossl::UniquePtr<EVP_PKEY>(EVP_PKEY_dup(pub));
  }
  return absl::InvalidArgumentError(
      StrCat("signer kind \"", kind, "\" is not \"certificate\" or \"request\""));
}

absl::StatusOr<VerifiedTranscript> VerifyTranscript(const std::string& path,
                                                    EVP_PKEY* expected_signer) {
  auto bytes = ReadFileBytes(path, kMaxTranscriptBytes);
  if (!bytes.ok()) return bytes.status();
  json file = json::parse(bytes->begin(), bytes->end(), nullptr, /*allow_exceptions=*/false);
  if (file.is_discarded() || !file.is_object()) {
    return absl::InvalidArgumentError(StrCat(path, " is not JSON"));
  }
  if (file.value("format", "") != kTranscriptFormat) {
    return absl::InvalidArgumentError(
        StrCat(path, " is not a keywarden ceremony transcript (format is not \"", kTranscriptFormat,
               "\")"));
  }
  const json& body = file["transcript"];
  const json& signature = file["signature"];
  auto is_string = [](const json& j, const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_string();
  };
  if (!body.is_object() || !body.contains("outputs") || !body["outputs"].is_array() ||
      !body.contains("signer") || !is_string(body["signer"], "path") ||
      !is_string(body["signer"], "kind") || !is_string(signature, "digest") ||
      !is_string(signature, "padding") || !is_string(signature, "value")) {
    return absl::InvalidArgumentError(
        StrCat(path,
               ": a transcript needs transcript.outputs, transcript.signer.path/kind and "
               "signature.digest/padding/value"));
  }
  VerifiedTranscript v;
  v.body = body;
  v.signer_path = body["signer"]["path"].get<std::string>();
  v.signer_kind = body["signer"]["kind"].get<std::string>();
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  auto resolve = [&](const std::string& p) {
    return (p.empty() || p.front() == '/' || dir.empty()) ? p : (dir / p).string();
  };

  bool signer_listed = false;
  for (const json& o : body["outputs"]) {
    TranscriptOutputCheck c;
    if (!is_string(o, "path") || !is_string(o, "sha256")) {
      v.problems.push_back("an entry of transcript.outputs has no path or sha256");
      continue;
    }
    c.path = o["path"].get<std::string>();
    c.kind = o.value("kind", "");
    c.expected_sha256 = o["sha256"].get<std::string>();
    auto data = ReadFileBytes(resolve(c.path));
    if (!data.ok()) {
      c.problem = StrCat("output ", c.path, " cannot be read: ", data.status().message());
    } else {
      c.actual_sha256 = Sha256Hex(*data);
      if (c.actual_sha256 != c.expected_sha256) {
        c.problem = StrCat("output ", c.path, " has changed: SHA-256 ", c.actual_sha256,
                           ", the transcript records ", c.expected_sha256);
      }
    }
    if (c.path == v.signer_path) signer_listed = true;
    if (!c.problem.empty()) v.problems.push_back(c.problem);
    v.outputs.push_back(std::move(c));
  }
  if (!signer_listed) {
    v.problems.push_back(StrCat("the signer ", v.signer_path, " is not among the outputs"));
  }

  auto pub = SignerPublicKey(resolve(v.signer_path), v.signer_kind);
  if (!pub.ok()) {
    v.problems.push_back(StrCat("signer: ", pub.status().message()));
    return v;
  }
  v.signer_key_sha256 = SpkiSha256(pub->get());
  if (expected_signer != nullptr && EVP_PKEY_eq(pub->get(), expected_signer) != 1) {
    ERR_clear_error();
    v.signer_expected = false;
    v.problems.push_back(StrCat("the transcript is signed by the key of ", v.signer_path,
                                " (SPKI SHA-256 ", v.signer_key_sha256,
                                "), not by the expected CA key"));
  }
  const std::string digest = signature["digest"].get<std::string>();
  const std::string padding = signature["padding"].get<std::string>();
  const std::vector<uint8_t> sig = Base64Decode(signature["value"].get<std::string>());
  if (!IsAllowedDigest(digest) || (padding != "pkcs1" && padding != "pss" && padding != "ecdsa") ||
      padding != PaddingOf(pub->get(), padding == "pss")) {
    v.problems.push_back(StrCat("signature: digest ", digest, " / padding ", padding,
                                " is not one keywarden makes for this key"));
    return v;
  }
  v.signature_ok = !sig.empty() && VerifyBytes(body.dump(), sig, digest, padding, pub->get());
  if (!v.signature_ok) {
    v.problems.insert(v.problems.begin(),
                      StrCat("the signature does not verify with the key of ", v.signer_path,
                             ": the transcript was altered after it was signed"));
  }
  return v;
}

}  // namespace keywarden::pki
