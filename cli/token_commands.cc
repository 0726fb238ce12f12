// keywarden token: the tokens a PKCS#11 module offers, and what a key
// holder (e.g. a Key Recovery Agent with a smart card) needs to enrol:
//   token list                  the tokens of a module
//   token keygen                a key pair made on the token (never extractable)
//   token csr                   a PKCS#10 for a token key, signed on the token
//   token import-cert           the issued certificate onto the token beside its key
#include "cli/commands.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/open.h"
#include "hsm/pin.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/files.h"

namespace keywarden::cli {

absl::StatusOr<std::shared_ptr<hsm::Token>> OpenTokenWithPin(const std::string& module,
                                                             const std::string& token_uri,
                                                             const std::string& pin_source) {
  auto uri = hsm::Pkcs11Uri::Parse(token_uri);
  if (!uri.ok()) return uri.status();
  auto pin = hsm::PinSource::Parse(pin_source);
  if (!pin.ok()) return pin.status();
  hsm::OpenOptions open;
  open.default_module = DefaultModule(module);
  open.pin = *pin;
  return hsm::OpenToken(*uri, open);
}

void RegisterTokenCommands(CLI::App& app, const Output& out, Action& action) {
  CLI::App* token = app.add_subcommand("token", "PKCS#11 tokens (HSMs, smart cards)");
  token->require_subcommand(1);
  CLI::App* list = token->add_subcommand("list", "List the tokens of a PKCS#11 module");
  auto module = std::make_shared<std::string>();
  list->add_option("--module", *module,
                   "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
  list->callback([&out, &action, module] {
    action = [&out, module] {
      std::string spec = DefaultModule(*module);
      auto m = hsm::Module::Load(spec);
      if (!m.ok()) return out.Fail(m.status());
      auto tokens = (*m)->Tokens();
      if (!tokens.ok()) return out.Fail(tokens.status());
      nlohmann::json j = nlohmann::json::array();
      std::string text;
      for (const auto& t : *tokens) {
        const bool logged_in_required = (t.info.flags & CKF_LOGIN_REQUIRED) != 0;
        j.push_back({{"label", t.label},
                     {"serial", t.serial},
                     {"manufacturer", t.manufacturer},
                     {"model", t.model},
                     {"login_required", logged_in_required},
                     {"initialized", t.initialized},
                     {"uri", StrCat("pkcs11:token=", t.label, ";serial=", t.serial)}});
        text += t.initialized ? StrCat(t.label, "\tserial ", t.serial, "\t", t.manufacturer, " ",
                                       t.model, "\n")
                              : StrCat("(not initialised)\t", t.manufacturer, " ", t.model, "\n");
      }
      out.Result({{"module", (*m)->path()}, {"tokens", j}}, text.empty() ? "no tokens\n" : text);
      return static_cast<int>(kExitOk);
    };
  });

  struct KeyOptions {
    std::string module, token, pin_source = "prompt", label, algorithm = "rsa2048", subject, out,
                               cert;
    bool decrypt = false;
  };
  auto o = std::make_shared<KeyOptions>();
  auto add_token = [o](CLI::App* cmd) {
    cmd->add_option("--token", o->token, "PKCS#11 URI of the token, e.g. pkcs11:token=kra-card-1")
        ->required();
    cmd->add_option("--pin-source", o->pin_source, "file:PATH, env:NAME or prompt (default)");
    cmd->add_option("--module", o->module,
                    "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
    cmd->add_option("--label", o->label, "The key's label (CKA_LABEL)")->required();
  };

  CLI::App* keygen = token->add_subcommand(
      "keygen", "Make a key pair on the token (sensitive, never extractable)");
  add_token(keygen);
  keygen->add_option("--algorithm", o->algorithm,
                     "rsa2048 (default), rsa3072, rsa4096, ec-p256, "
                     "ec-p384");
  keygen->add_flag("--decrypt", o->decrypt,
                   "The key may also decrypt (key transport: a KRA or exchange key; RSA only)");
  keygen->callback([&out, &action, o] {
    action = [&out, o] {
      auto opened = OpenTokenWithPin(o->module, o->token, o->pin_source);
      if (!opened.ok()) return out.Fail(opened.status());
      auto algorithm = hsm::ParseKeyAlgorithm(o->algorithm);
      if (!algorithm.ok()) return out.Fail(algorithm.status());
      hsm::KeySpec spec;
      spec.algorithm = *algorithm;
      spec.label = o->label;
      spec.usage.decrypt = o->decrypt;
      auto key = hsm::GenerateKeyPair(*opened, spec);
      if (!key.ok()) return out.Fail(key.status());
      const std::string id = HexString((*key)->id);
      out.Result({{"label", o->label}, {"id", id}, {"key", (*key)->Describe()}},
                 StrCat("Made ", (*key)->Describe(), ", id ", id, "\n"));
      return static_cast<int>(kExitOk);
    };
  });

  CLI::App* csr = token->add_subcommand(
      "csr", "Write a PKCS#10 request for a key on the token, signed on the token");
  add_token(csr);
  csr->add_option("--subject", o->subject, "Subject, e.g. \"CN=KRA 1,O=Example\"")->required();
  csr->add_option("--out", o->out, "Request file to write (DER; must not exist)")->required();
  csr->callback([&out, &action, o] {
    action = [&out, o] {
      if (auto st = pki::CheckWritable(o->out, pki::Overwrite::kRefuse); !st.ok()) {
        return out.Fail(st);
      }
      auto opened = OpenTokenWithPin(o->module, o->token, o->pin_source);
      if (!opened.ok()) return out.Fail(opened.status());
      auto key = hsm::FindPrivateKey(*opened, o->label);
      if (!key.ok()) return out.Fail(key.status());
      auto crypto = hsm::CryptoContext::Create();
      if (!crypto.ok()) return out.Fail(crypto.status());
      auto pkey = (*crypto)->Load(*key);
      if (!pkey.ok()) return out.Fail(pkey.status());
      auto subject = pki::ParseName(o->subject);
      if (!subject.ok()) return out.Fail(subject.status());
      auto req = pki::MakeKeyRequest((*crypto)->libctx(), pkey->get(), subject->get(), {});
      if (!req.ok()) return out.Fail(req.status());
      unsigned char* der = nullptr;
      const int len = i2d_X509_REQ(req->get(), &der);
      std::vector<uint8_t> bytes(der, der + std::max(len, 0));
      OPENSSL_free(der);
      if (auto st = pki::WriteFileAtomically(o->out, bytes, pki::Overwrite::kRefuse); !st.ok()) {
        return out.Fail(st);
      }
      out.Result({{"file", o->out}, {"subject", o->subject}},
                 StrCat("Request for ", (*key)->Describe(), " written to ", o->out, "\n"));
      return static_cast<int>(kExitOk);
    };
  });

  CLI::App* import = token->add_subcommand(
      "import-cert", "Put a certificate onto the token beside its key (same label and CKA_ID)");
  add_token(import);
  import->add_option("--cert", o->cert, "Certificate (PEM)")->required();
  import->callback([&out, &action, o] {
    action = [&out, o] {
      auto certs = pki::ReadPemCertificates(o->cert);
  if (!certs.ok()) return out.Fail(certs.status());
  auto opened = OpenTokenWithPin(o->module, o->token, o->pin_source);
  if (!opened.ok()) return out.Fail(opened.status());
  auto key = hsm::FindPrivateKey(*opened, o->label);
  if (!key.ok()) return out.Fail(key.status());
  X509* cert = certs->front().get();
  if (EVP_PKEY_eq(X509_get0_pubkey(cert), (*key)->public_key.get()) != 1) {
    return out.Fail(absl::InvalidArgumentError(
        StrCat(o->cert, " is not a certificate for ", (*key)->Describe())));
  }
  auto handle = hsm::ImportCertificate(**opened, cert, o->label, (*key)->id);
  if (!handle.ok()) return out.Fail(handle.status());
  out.Result({{"label", o->label}, {"sha1", pki::Sha1Thumbprint(cert)}},
             StrCat("Certificate ", pki::FormatName(X509_get_subject_name(cert)), " stored beside ",
                    (*key)->Describe(), "\n"));
  return static_cast<int>(kExitOk);
};
}  // namespace keywarden::cli
);
}

}  // namespace keywarden::cli
