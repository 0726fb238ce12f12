// keywarden token: the tokens a PKCS#11 module offers, and what a key
// holder (e.g. a Key Recovery Agent with a smart card) needs to enrol:
//   token list                  the tokens of a module
//   token keygen                a key pair made on the token (never extractable)
//   token csr                   a PKCS#10 for a token key, signed on the token
//   token import-cert           the issued certificate onto the token beside its key
//   token backup SOURCE OUT     a verified copy of a file-backed SoftHSM2 token
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/open.h"
#include "hsm/pin.h"
#include "hsm/provider/provider.h"
#include "hsm/selftest.h"
#include "hsm/status.h"
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

namespace {

namespace fs = std::filesystem;

// What a copy of a SoftHSM2 token holds, as the module itself reads it.
struct TokenCopy {
  std::string label, serial;
  size_t objects = 0;  // objects visible without logging in
};

// Opens the token directory `copy_root` (one token) with its own
// SOFTHSM2_CONF in a child process (a module reads its configuration once,
// at C_Initialize) and lists it: "label\nserial\nobjects\n".
// ROOT/softhsm2.conf naming ROOT/tokens: the copy opens with SOFTHSM2_CONF=ROOT/softhsm2.conf.
absl::Status WriteConf(const std::string& root) {
  const std::string conf = root + "/softhsm2.conf";
  std::ofstream f(conf, std::ios::trunc);
  f << "directories.tokendir = " << root << "/tokens\nobjectstore.backend = file\n"
    << "log.level = ERROR\n";
  f.close();
  if (!f) return absl::InternalError(StrCat("cannot write ", conf));
  return absl::OkStatus();
}

absl::StatusOr<TokenCopy> OpenCopy(const std::string& module, const std::string& copy_root) {
  const std::string conf = copy_root + "/softhsm2.conf";
  if (auto st = WriteConf(copy_root); !st.ok()) return st;
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    close(fds[0]);
    setenv("SOFTHSM2_CONF", conf.c_str(), 1);
    std::string text;
    auto m = hsm::Module::Load(module);
    if (m.ok()) {
      auto tokens = (*m)->Tokens();
      if (tokens.ok()) {
        for (const auto& t : *tokens) {
          if (!t.initialized) continue;
          CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
          size_t n = 0;
          if ((*m)->functions()->C_OpenSession(t.slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h) ==
              CKR_OK) {
            if ((*m)->functions()->C_FindObjectsInit(h, nullptr, 0) == CKR_OK) {
              CK_OBJECT_HANDLE batch[64];
              CK_ULONG got = 0;
              while ((*m)->functions()->C_FindObjects(h, batch, 64, &got) == CKR_OK && got > 0)
                n += got;
              (*m)->functions()->C_FindObjectsFinal(h);
            }
            (*m)->functions()->C_CloseSession(h);
          }
          text += StrCat(t.label, "\n", t.serial, "\n", n, "\n");
        }
      }
    }
    (void)!write(fds[1], text.data(), text.size());
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buf[512];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::vector<std::string> lines;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) break;
    lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  if (lines.size() != 3) {
    return absl::DataLossError(StrCat("the copy in ", copy_root,
                                      " does not open as exactly one initialised token (",
                                      lines.size() / 3, " found)"));
  }
  return TokenCopy{lines[0], lines[1],
                   static_cast<size_t>(std::strtoull(lines[2].c_str(), nullptr, 10))};
}

// The directories.tokendir of a SoftHSM2 configuration file.
absl::StatusOr<std::string> TokenDirOf(const std::string& conf) {
  std::ifstream f(conf);
  if (!f) return absl::NotFoundError(StrCat("cannot read SoftHSM2 configuration ", conf));
  std::string line;
  while (std::getline(f, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    auto trim = [](std::string& v) {
      v.erase(0, v.find_first_not_of(" \t"));
      v.erase(v.find_last_not_of(" \t\r") + 1);
    };
    trim(key);
    trim(value);
    if (key == "directories.tokendir") return value;
  }
  return absl::NotFoundError(StrCat(conf, " has no directories.tokendir"));
}

// Size and modification time of every file, to see a token written during the copy.
std::string Fingerprint(const fs::path& dir) {
  std::string out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    struct stat st;
    if (stat(e.path().c_str(), &st) != 0) continue;
    out += StrCat(e.path().filename().string(), ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                  st.st_mtim.tv_nsec, ";");
  }
  return out;
}

// Copies the token directory `source` to `staging`/tokens/<name> and opens the copy.
absl::StatusOr<TokenCopy> CopyAndVerify(const std::string& module, const fs::path& source,
                                        const fs::path& staging) {
  std::error_code ec;
  for (int attempt = 0; attempt < 3; ++attempt) {
    fs::remove_all(staging, ec);
    const fs::path target = staging / "tokens" / source.filename();
    fs::create_directories(target, ec);
    if (ec)
      return absl::InternalError(StrCat("cannot create ", target.string(), ": ", ec.message()));
    const std::string before = Fingerprint(source);
    for (const auto& e : fs::directory_iterator(source, ec)) {
      if (!e.is_regular_file()) continue;
      fs::copy_file(e.path(), target / e.path().filename(), ec);
      if (ec) {
        return absl::InternalError(StrCat("cannot copy ", e.path().string(), ": ", ec.message()));
      }
    }
    if (Fingerprint(source) != before) continue;  // written meanwhile: again
    return OpenCopy(module, staging.string());
  }
  return absl::UnavailableError(
      StrCat("the token in ", source.string(),
             " changed during three copies; stop what uses it and retry"));
}

int Backup(const Output& out, const std::string& module_flag, const std::string& conf_flag,
           const std::string& source, const std::string& dest) {
  const std::string module = DefaultModule(module_flag);
  std::error_code ec;
  if (fs::exists(dest, ec)) {
    return out.Fail(absl::AlreadyExistsError(StrCat(dest, " exists; give a new directory")));
  }
  std::vector<fs::path> candidates;
  std::optional<hsm::Pkcs11Uri> uri;
  if (source.rfind("pkcs11:", 0) == 0) {
    auto parsed = hsm::Pkcs11Uri::Parse(source);
    if (!parsed.ok()) return out.Fail(parsed.status());
    uri = *parsed;
    const char* env = std::getenv("SOFTHSM2_CONF");
    const std::string conf = !conf_flag.empty() ? conf_flag
                             : env != nullptr   ? std::string(env)
                                                : std::string("/etc/softhsm/softhsm2.conf");
    auto dir = TokenDirOf(conf);
    if (!dir.ok()) return out.Fail(dir.status());
    for (const auto& e : fs::directory_iterator(*dir, ec)) {
      if (e.is_directory() && fs::exists(e.path() / "token.object")) candidates.push_back(e.path());
    }
    if (ec) return out.Fail(absl::NotFoundError(StrCat("cannot list ", *dir, ": ", ec.message())));
  } else {
    if (!fs::exists(fs::path(source) / "token.object")) {
      return out.Fail(absl::NotFoundError(
          StrCat(source,
                 " is not a SoftHSM2 token directory (no token.object); give the "
                 "token's directory or its PKCS#11 URI")));
    }
    candidates.push_back(fs::path(source));
  }
  const fs::path staging = fs::path(dest).string() + ".partial";
  std::vector<std::string> seen;
  for (const fs::path& c : candidates) {
    auto copy = CopyAndVerify(module, c, staging);
    if (!copy.ok()) {
      fs::remove_all(staging, ec);
      if (uri) {  // a damaged token among several: say so, keep looking
        seen.push_back(StrCat(c.string(), " (", copy.status().message(), ")"));
        continue;
      }
      return out.Fail(copy.status());
    }
    if (uri) {
      hsm::SlotToken t{};
      t.label = copy->label;
      t.serial = copy->serial;
      t.initialized = true;
      if (!uri->MatchesToken(t)) {
        seen.push_back(StrCat("\"", copy->label, "\" in ", c.string()));
        fs::remove_all(staging, ec);
        continue;
      }
    }
    fs::rename(staging, dest, ec);
    if (!ec) {
      if (auto st = WriteConf(dest); !st.ok()) return out.Fail(st);
    }
    if (ec)
      return out.Fail(absl::InternalError(StrCat("cannot rename to ", dest, ": ", ec.message())));
    out.Result({{"source", c.string()},
                {"backup", dest},
                {"label", copy->label},
                {"serial", copy->serial},
                {"public_objects", copy->objects}},
               StrCat("Token \"", copy->label, "\" (serial ", copy->serial, ") copied from ",
                      c.string(), " to ", dest, "; the copy opens and lists ", copy->objects,
                      " public object(s). To restore: stop keywardend, replace the token's "
                      "directory with ",
                      dest, "/tokens/", c.filename().string(), "\n"));
    return static_cast<int>(kExitOk);
  }
  return out.Fail(absl::NotFoundError(StrCat(
      "no token matching ", source, " among: ", seen.empty() ? "none" : StrJoin(seen, "; "))));
}

}  // namespace

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

  // seed: events 86/88 -- find out before go-live whether a token can do
  // what each role needs, not at the first archival.
  struct SelfTestCliOptions {
    std::string module, token, pin_source = "prompt", scheme = "des3-rsa-pkcs1";
    size_t max_sessions = 0;
    bool mechanisms_only = false, archival_only = false;
  };
  auto self = std::make_shared<SelfTestCliOptions>();
  CLI::App* selftest = token->add_subcommand(
      "selftest",
      "Check that a token can do what keywarden needs: mechanisms, then live operations on "
      "session objects only (nothing is written to the token)");
  selftest->add_option("--token", self->token, "PKCS#11 URI of the token")->required();
  selftest->add_option("--pin-source", self->pin_source, "file:PATH, env:NAME or prompt (default)");
  selftest->add_option("--module", self->module,
                       "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
  selftest
      ->add_option("--archival-scheme", self->scheme,
                   "des3-rsa-pkcs1 (Windows, default) or aes256-rsa-oaep: the other scheme's "
                   "checks are optional")
      ->check(CLI::IsMember({"des3-rsa-pkcs1", "aes256-rsa-oaep"}));
  selftest->add_option("--max-sessions", self->max_sessions,
                       "Sessions the daemon will open ([hsm] max_sessions), checked against the "
                       "token's limit");
  selftest->add_flag("--mechanisms-only", self->mechanisms_only,
                     "Only the mechanism list (no login, no live operation)");
  selftest->add_flag("--archival-only", self->archival_only,
                     "Only what key archival needs (what keywardend checks at start)");
  selftest->callback([&out, &action, self] {
    action = [&out, self]() -> int {
      absl::StatusOr<std::shared_ptr<hsm::Token>> opened;
      if (self->mechanisms_only) {
        auto uri = hsm::Pkcs11Uri::Parse(self->token);
        if (!uri.ok()) return out.Fail(uri.status());
        hsm::OpenOptions open;
        open.default_module = DefaultModule(self->module);
        opened = hsm::OpenToken(*uri, open);
      } else {
        opened = OpenTokenWithPin(self->module, self->token, self->pin_source);
      }
      if (!opened.ok()) return out.Fail(opened.status());
      hsm::SelfTestOptions options;
      options.live = !self->mechanisms_only;
      options.archival_only = self->archival_only;
      options.archival_scheme = self->scheme;
      options.sessions_needed = self->max_sessions;
      const std::vector<hsm::SelfTestCheck> checks = hsm::RunSelfTest(*opened, options);
      const bool passed = hsm::SelfTestPassed(checks);
      nlohmann::json rows = nlohmann::json::array();
      std::string text =
          StrCat("Token \"", (*opened)->label(), "\" (serial ", (*opened)->serial(), ")\n");
      for (const hsm::SelfTestCheck& c : checks) {
        const std::string rv = c.rv == CKR_OK ? std::string() : hsm::RvName(c.rv);
        rows.push_back({{"role", c.role},
                        {"check", c.name},
                        {"result", hsm::CheckResultName(c.result)},
                        {"required", c.required},
                        {"rv", rv.empty() ? nlohmann::json(nullptr) : nlohmann::json(rv)},
                        {"detail", c.detail}});
        std::string result = hsm::CheckResultName(c.result);
        if (c.result == hsm::CheckResult::kFail && !c.required) result += " (optional)";
        text += StrCat("  ", result, std::string(result.size() < 16 ? 16 - result.size() : 1, ' '),
                       c.role, ": ", c.name, rv.empty() ? "" : StrCat(" -> ", rv),
                       c.detail.empty() ? "" : StrCat(" (", c.detail, ")"), "\n");
      }
      text += passed ? "Every required check passed.\n"
                     : "A required check failed: keywarden cannot use this token for that role.\n";
      out.Result({{"token", (*opened)->label()},
                  {"serial", (*opened)->serial()},
                  {"passed", passed},
                  {"checks", rows}},
                 text);
      return passed ? static_cast<int>(kExitOk) : static_cast<int>(kExitFailed);
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

  struct BackupOptions {
    std::string module, conf, source, out;
  };
  auto b = std::make_shared<BackupOptions>();
  CLI::App* backup = token->add_subcommand(
      "backup",
      "Copy a file-backed SoftHSM2 token directory (by URI or path) and verify the copy opens");
  backup
      ->add_option("source", b->source,
                   "PKCS#11 URI of the token (found under the tokendir of SOFTHSM2_CONF) or "
                   "the token's directory")
      ->required();
  backup->add_option("out", b->out, "Directory to create for the copy (must not exist)")
      ->required();
  backup->add_option("--softhsm-conf", b->conf,
                     "SoftHSM2 configuration naming the tokendir (default $SOFTHSM2_CONF)");
  backup->add_option("--module", b->module,
                     "SoftHSM2 module path (default $KEYWARDEN_PKCS11_MODULE)");
  backup->callback([&out, &action, b] {
    action = [&out, b] { return Backup(out, b->module, b->conf, b->source, b->out); };
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
