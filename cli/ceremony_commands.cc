// keywarden ceremony: key ceremonies on the HSM. Like an operator's
// ceremony tool, every step refuses to overwrite: an existing key label or
// output file stops the run before anything is created, and every
// signature is verified right after it is made.
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <iostream>

#include "cli/ceremony/ceremony.h"
#include "cli/ceremony/ceremony_file.h"
#include "cli/commands.h"
#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "pki/ceremony_transcript.h"
#include "pki/certificate.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

struct RootOptions {
  std::string module;
  std::string token_uri;
  std::string pin_source = "prompt";
  std::string key_label;
  std::string key_algorithm = "rsa3072";
  std::string subject;
  int days = 3650;
  int path_length = -1;
  std::string digest = "SHA256";
  bool pss = false;
  std::string out;
};

// The common first half of a CA-key ceremony: everything that can be
// checked without the token first (algorithm, subject, output file, PIN
// source), then the token, the provider context and the new key on it.
struct CeremonyKey {
  ossl::UniquePtr<X509_NAME> subject;
  std::shared_ptr<hsm::Token> token;
  std::shared_ptr<hsm::CryptoContext> crypto;
  std::shared_ptr<hsm::TokenKey> key;
  ossl::UniquePtr<EVP_PKEY> pkey;  // the token key through the provider
  hsm::KeyAlgorithm algorithm = hsm::KeyAlgorithm::kRsa3072;
};

absl::StatusOr<CeremonyKey> GenerateCeremonyKey(const RootOptions& o) {
  CeremonyKey c;
  auto algorithm = hsm::ParseKeyAlgorithm(o.key_algorithm);
  if (!algorithm.ok()) return algorithm.status();
  c.algorithm = *algorithm;
  auto subject = pki::ParseName(o.subject);
  if (!subject.ok()) return subject.status();
  c.subject = std::move(*subject);
  if (auto st = pki::CheckWritable(o.out, pki::Overwrite::kRefuse); !st.ok()) return st;
  if (auto pin = hsm::PinSource::Parse(o.pin_source); !pin.ok()) return pin.status();
  auto token = OpenTokenWithPin(o.module, o.token_uri, o.pin_source);
  if (!token.ok()) return token.status();
  c.token = std::move(*token);
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return crypto.status();
  c.crypto = std::move(*crypto);
  hsm::KeySpec spec;
  spec.algorithm = c.algorithm;
  spec.label = o.key_label;
  spec.usage.sign = true;
  auto key = hsm::GenerateKeyPair(c.token, spec);
  if (!key.ok()) return key.status();
  c.key = std::move(*key);
  auto pkey = c.crypto->Load(c.key);
  if (!pkey.ok()) return pkey.status();
  c.pkey = std::move(*pkey);
  return c;
}

absl::StatusOr<nlohmann::json> RunRoot(const RootOptions& o, std::string& text) {
  auto c = GenerateCeremonyKey(o);
  if (!c.ok()) return c.status();

  pki::RootCaOptions root;
  root.subject = c->subject.get();
  root.validity_days = o.days;
  root.path_length = o.path_length;
  root.signature.digest = o.digest;
  root.signature.rsa_pss = o.pss;
  auto cert = pki::MakeSelfSignedRoot(c->crypto->libctx(), c->pkey.get(), root);
  if (!cert.ok()) return cert.status();
  auto stored = hsm::ImportCertificate(*c->token, cert->get(), o.key_label, c->key->id);
  if (!stored.ok()) return stored.status();
  if (auto st = pki::WriteFileAtomically(o.out, pki::ToPem(cert->get()), pki::Overwrite::kRefuse);
      !st.ok()) {
    return st;
  }

  const std::string sha1 = pki::Sha1Thumbprint(cert->get());
  const std::string sha256 = pki::Sha256Thumbprint(cert->get());
  const std::string subj = pki::FormatName(X509_get_subject_name(cert->get()));
  const std::string key_uri =
      StrCat("pkcs11:token=", c->token->label(), ";object=", o.key_label, ";type=private");
  text = StrCat("Root CA key generated on token \"", c->token->label(), "\" (", c->key->Describe(),
                ")\n", "  key URI:     ", key_uri, "\n", "  key id:      ", HexString(c->key->id),
                "\n", "  subject:     ", subj, "\n", "  SHA-1:       ", sha1, "\n",
                "  SHA-256:     ", sha256, "\n", "  certificate: ", o.out,
                " (signature verified; also stored on the token)\n");
  return nlohmann::json{{"token", c->token->label()},
                        {"key_uri", key_uri},
                        {"key_id", HexString(c->key->id)},
                        {"key_algorithm", hsm::KeyAlgorithmName(c->algorithm)},
                        {"subject", subj},
                        {"sha1", sha1},
                        {"sha256", sha256},
                        {"certificate", o.out}};
}

// keywarden ceremony subordinate: key on the token + CSR for the parent CA.
absl::StatusOr<nlohmann::json> RunSubordinate(const RootOptions& o, std::string& text) {
  auto c = GenerateCeremonyKey(o);
  if (!c.ok()) return c.status();
  auto req = pki::MakeCaRequest(c->crypto->libctx(), c->pkey.get(), c->subject.get(),
                                pki::SignatureOptions{o.digest, o.pss});
  if (!req.ok()) return req.status();
  if (auto st = pki::WriteFileAtomically(o.out, pki::ToPem(req->get()), pki::Overwrite::kRefuse);
      !st.ok()) {
    return st;
  }
  const std::string key_uri =
      StrCat("pkcs11:token=", c->token->label(), ";object=", o.key_label, ";type=private");
  text = StrCat("Subordinate CA key generated on token \"", c->token->label(), "\" (",
                c->key->Describe(), ")\n  key URI: ", key_uri, "\n  request: ", o.out,
                " (take it to the parent CA, then run `keywarden ceremony install`)\n");
  return nlohmann::json{{"token", c->token->label()},
                        {"key_uri", key_uri},
                        {"key_id", HexString(c->key->id)},
                        {"request", o.out}};
}

struct InstallOptions {
  std::string module, token_uri, pin_source = "prompt", key_label, certificate, chain, out;
};

// keywarden ceremony install: the parent CA's answer, checked and stored.
absl::StatusOr<nlohmann::json> RunInstall(const InstallOptions& o, std::string& text) {
  auto certs = pki::ReadPemCertificates(o.certificate);
  if (!certs.ok()) return certs.status();
  auto chain = pki::ReadPemCertificates(o.chain);
  if (!chain.ok()) return chain.status();
  if (auto st = pki::CheckWritable(o.out, pki::Overwrite::kRefuse); !st.ok()) return st;
  if (auto pin = hsm::PinSource::Parse(o.pin_source); !pin.ok()) return pin.status();
  auto token = OpenTokenWithPin(o.module, o.token_uri, o.pin_source);
  if (!token.ok()) return token.status();
  auto key = hsm::FindPrivateKey(*token, o.key_label);
  if (!key.ok()) return key.status();
  X509* cert = certs->front().get();
  if (auto st = pki::CheckSubordinateCertificate(cert, (*key)->public_key.get(), *chain);
      !st.ok()) {
    return st;
  }
  auto stored = hsm::ImportCertificate(**token, cert, o.key_label, (*key)->id);
  if (!stored.ok()) return stored.status();
  std::string pem = pki::ToPem(cert);
  for (const auto& c : *chain) pem += pki::ToPem(c.get());
  if (auto st = pki::WriteFileAtomically(o.out, pem, pki::Overwrite::kRefuse); !st.ok()) return st;
  const std::string subj = pki::FormatName(X509_get_subject_name(cert));
  text = StrCat("Installed subordinate CA certificate for key \"", o.key_label,
                "\"\n  subject: ", subj, "\n  SHA-1:   ", pki::Sha1Thumbprint(cert),
                "\n  chain:   ", o.out,
                " (certificate followed by its issuers; also stored on the token)\n");
  return nlohmann::json{
      {"subject", subj}, {"sha1", pki::Sha1Thumbprint(cert)}, {"certificate", o.out}};
}

struct RunOptions {
  std::string file, module;
  std::vector<std::string> automation_pins;
};

// keywarden ceremony run FILE: the whole ceremony the file describes.
absl::StatusOr<nlohmann::json> RunFile(const RunOptions& o, std::string& text) {
  auto spec = ceremony::ParseCeremonyFile(o.file);
  if (!spec.ok()) return spec.status();
  ceremony::RunOptions run;
  run.default_module = DefaultModule(o.module);
  for (const std::string& entry : o.automation_pins) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(StrCat(
          "--automation-pin ", entry, ": give TOKEN-LABEL=file:PATH or TOKEN-LABEL=env:NAME"));
    }
    run.pins.automation[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  run.progress = [](const std::string& step, const std::string& what) {
    std::cerr << "== " << step << ": " << what << std::endl;
  };
  auto result = ceremony::RunCeremony(*spec, run);
  if (!result.ok()) return result.status();
  text = result->text;
  return result->transcript;
}

// keywarden ceremony verify TRANSCRIPT: the signature and every output's hash.
int VerifyFile(const Output& out, const std::string& path, const std::string& ca_cert) {
  ossl::UniquePtr<EVP_PKEY> expected;
  if (!ca_cert.empty()) {
    auto certs = pki::ReadPemCertificates(ca_cert);
    if (!certs.ok()) return out.Fail(certs.status());
    expected.reset(EVP_PKEY_dup(X509_get0_pubkey(certs->front().get())));
  }
  auto v = pki::VerifyTranscript(path, expected.get());
  if (!v.ok()) return out.Fail(v.status());
  nlohmann::json outputs = nlohmann::json::array();
  std::string text =
      StrCat("Transcript ", path, " of ceremony \"",
             v->body.value(nlohmann::json::json_pointer("/ceremony/name"), std::string()), "\"\n");
  text +=
      StrCat("  signature: ",
             v->signature_ok ? "verifies with the key of " : "DOES NOT VERIFY with the key of ",
             v->signer_path, " (", v->signer_kind, ", SPKI SHA-256 ", v->signer_key_sha256, ")\n");
  for (const pki::TranscriptOutputCheck& c : v->outputs) {
    outputs.push_back({{"path", c.path},
                       {"kind", c.kind},
                       {"sha256", c.expected_sha256},
                       {"actual_sha256", c.actual_sha256},
                       {"ok", c.problem.empty()}});
    text += StrCat("  ", c.problem.empty() ? "ok        " : "MISMATCH  ", c.path,
                   c.problem.empty() ? "" : StrCat(": ", c.problem), "\n");
  }
  for (const std::string& p : v->problems) {
    if (p.starts_with("output ")) continue;  // listed above
    text += StrCat("  PROBLEM: ", p, "\n");
  }
  text += v->ok() ? "The transcript is intact and every output matches it.\n"
                  : "The transcript or its outputs do NOT match.\n";
  out.Result({{"transcript", path},
              {"ok", v->ok()},
              {"signature_ok", v->signature_ok},
              {"signer", v->signer_path},
              {"signer_spki_sha256", v->signer_key_sha256},
              {"outputs", outputs},
              {"problems", v->problems}},
             text);
  return v->ok() ? static_cast<int>(kExitOk) : static_cast<int>(kExitFailed);
}

}  // namespace

void RegisterCeremonyCommands(CLI::App& app, const Output& out, Action& action) {
  CLI::App* ceremony = app.add_subcommand("ceremony", "Key ceremonies on the HSM");
  ceremony->require_subcommand(1);
  CLI::App* root = ceremony->add_subcommand(
      "root", "Generate a CA key on the token and a self-signed root certificate");
  auto o = std::make_shared<RootOptions>();
  root->add_option("--module", o->module,
                   "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
  root->add_option("--token", o->token_uri,
                   "PKCS#11 URI of the token, e.g. pkcs11:token=keywarden-ca")
      ->required();
  root->add_option("--pin-source", o->pin_source, "file:PATH, env:NAME or prompt (default prompt)");
  root->add_option("--key-label", o->key_label, "Label of the new key (must not exist)")
      ->required();
  root->add_option("--key-algorithm", o->key_algorithm,
                   "rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384 (default rsa3072)");
  root->add_option("--subject", o->subject, "Subject, e.g. \"CN=Example Root CA,O=Example\"")
      ->required();
  root->add_option("--days", o->days, "Validity in days (default 3650)");
  root->add_option("--path-length", o->path_length, "pathLenConstraint (default none)");
  root->add_option("--digest", o->digest, "SHA256, SHA384 or SHA512 (default SHA256)");
  root->add_flag("--pss", o->pss, "Sign with RSASSA-PSS instead of PKCS#1 v1.5");
  root->add_option("--out", o->out, "Where to write the certificate (PEM; must not exist)")
      ->required();
  auto add_key_options = [](CLI::App* cmd, RootOptions& opt) {
    cmd->add_option("--module", opt.module,
                    "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
    cmd->add_option("--token", opt.token_uri, "PKCS#11 URI of the token")->required();
    cmd->add_option("--pin-source", opt.pin_source,
                    "file:PATH, env:NAME or prompt (default prompt)");
    cmd->add_option("--key-label", opt.key_label, "Label of the new key (must not exist)")
        ->required();
    cmd->add_option("--key-algorithm", opt.key_algorithm,
                    "rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384 (default rsa3072)");
    cmd->add_option("--subject", opt.subject, "Subject, e.g. \"CN=Example Issuing CA,O=Example\"")
        ->required();
    cmd->add_option("--digest", opt.digest, "SHA256, SHA384 or SHA512 (default SHA256)");
    cmd->add_flag("--pss", opt.pss, "Sign with RSASSA-PSS instead of PKCS#1 v1.5");
  };
  CLI::App* sub = ceremony->add_subcommand(
      "subordinate", "Generate a CA key on the token and a certificate request for the parent CA");
  auto so = std::make_shared<RootOptions>();
  add_key_options(sub, *so);
  sub->add_option("--out", so->out, "Where to write the request (PEM; must not exist)")->required();
  sub->callback([&out, &action, so] {
    action = [&out, so] {
      std::string text;
      auto result = RunSubordinate(*so, text);
      if (!result.ok()) return out.Fail(result.status());
      out.Result(*result, text);
      return static_cast<int>(kExitOk);
    };
  });
  CLI::App* install = ceremony->add_subcommand(
      "install", "Check and install the certificate the parent CA issued for a subordinate key");
  auto io = std::make_shared<InstallOptions>();
  install->add_option("--module", io->module, "PKCS#11 module path or p11-kit name");
  install->add_option("--token", io->token_uri, "PKCS#11 URI of the token")->required();
  install->add_option("--pin-source", io->pin_source,
                      "file:PATH, env:NAME or prompt (default prompt)");
  install->add_option("--key-label", io->key_label, "Label of the subordinate CA key")->required();
  install->add_option("--certificate", io->certificate, "The issued certificate (PEM)")->required();
  install->add_option("--chain", io->chain, "The parent CA's certificates, up to its root (PEM)")
      ->required();
  install->add_option("--out", io->out, "Where to write certificate + chain (PEM; must not exist)")
      ->required();
  install->callback([&out, &action, io] {
    action = [&out, io] {
      std::string text;
      auto result = RunInstall(*io, text);
      if (!result.ok()) return out.Fail(result.status());
      out.Result(*result, text);
      return static_cast<int>(kExitOk);
    };
  });
  CLI::App* run = ceremony->add_subcommand(
      "run",
      "Run a whole key ceremony from one reviewed file: CA key, root or subordinate "
      "certificate, KRA keys on smart cards, the daemon's configuration, a round-trip proof "
      "and a signed transcript");
  auto ro = std::make_shared<RunOptions>();
  run->add_option("file", ro->file, "The ceremony file (TOML; see deploy/ceremony.example.toml)")
      ->required();
  run->add_option("--module", ro->module,
                  "PKCS#11 module path or p11-kit name when the file names none (default "
                  "$KEYWARDEN_PKCS11_MODULE)");
  run->add_option("--automation-pin", ro->automation_pins,
                  "TOKEN-LABEL=file:PATH or TOKEN-LABEL=env:NAME: where that token's PIN is "
                  "read instead of prompting its holder. For tests and CI only, NOT for "
                  "production ceremonies (each holder types their own PIN). Repeatable");
  run->callback([&out, &action, ro] {
    action = [&out, ro] {
      std::string text;
      auto result = RunFile(*ro, text);
      if (!result.ok()) return out.Fail(result.status());
      out.Result(*result, text);
      return static_cast<int>(kExitOk);
    };
  });
  CLI::App* verify = ceremony->add_subcommand(
      "verify", "Check a ceremony transcript: its signature and the SHA-256 of every output");
  auto transcript = std::make_shared<std::string>();
  auto expected_ca = std::make_shared<std::string>();
  verify->add_option("transcript", *transcript, "The transcript (JSON)")->required();
  verify->add_option("--ca-cert", *expected_ca,
                     "The CA certificate (PEM) whose key must have signed the transcript");
  verify->callback([&out, &action, transcript, expected_ca] {
    action = [&out, transcript, expected_ca] { return VerifyFile(out, *transcript, *expected_ca); };
  });
  root->callback([&out, &action, o] {
    action = [&out, o] {
      std::string text;
      auto result = RunRoot(*o, text);
      if (!result.ok()) return out.Fail(result.status());
      out.Result(*result, text);
      return static_cast<int>(kExitOk);
    };
  });
}

}  // namespace keywarden::cli
