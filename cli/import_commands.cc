// keywarden importpfx FILE|DIR...: archive the keys of PKCS#12 files in the
// CA database, like `certutil -f -importKMS` (seed: "Importing Users' Keys
// to the Certificate Server"). Every file is sent on its own; one that fails
// does not stop the batch, each is reported, and the run ends with the
// seed's summary (Users, Ignored signature certificates, ..., Keys archived).
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>

#include <openssl/crypto.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/pin.h"
#include "hsm/secret.h"
#include "hsm/strings.h"
#include "pki/files.h"

namespace keywarden::cli {
namespace {

constexpr size_t kMaxPfxBytes = 1 << 20;  // the daemon's limit (ImportArchivedKeyRequest.pfx)

// HRESULTs that say a file as a whole was not read (no key reached).
constexpr const char* kFileLevel[] = {"0x80070056", "0x80090008", "0x8009310b", "0x80070005"};

struct ImportOptions {
  std::vector<std::string> inputs;
  std::string password;
  std::string password_source;
  bool foreign = false;
};

bool IsPfxName(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower.ends_with(".pfx") || lower.ends_with(".p12");
}

// The files to import: each FILE as given, each DIR's *.pfx and *.p12 (not
// recursive), in name order.
absl::StatusOr<std::vector<std::string>> ExpandInputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    struct stat st {};
    if (stat(in.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      // A file that cannot be read fails on its own, reported with the others.
      files.push_back(in);
      continue;
    }
    DIR* dir = opendir(in.c_str());
    if (dir == nullptr) return absl::PermissionDeniedError(StrCat(in, ": cannot list directory"));
    std::vector<std::string> found;
    while (const dirent* e = readdir(dir)) {
      const std::string name = e->d_name;
      if (!IsPfxName(name)) continue;
      const std::string path = StrCat(in, in.ends_with("/") ? "" : "/", name);
      struct stat fst {};
      if (stat(path.c_str(), &fst) == 0 && S_ISREG(fst.st_mode)) found.push_back(path);
    }
    closedir(dir);
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  if (files.empty()) {
    return absl::NotFoundError(
        StrCat(StrJoin(inputs, ", "), ": no .pfx or .p12 file in the directory"));
  }
  return files;
}

// One password for the whole batch: -p, --password-source, or one prompt.
absl::StatusOr<hsm::SecretString> BatchPassword(const ImportOptions& o) {
  if (!o.password.empty()) return hsm::SecretString(o.password);
  auto source = hsm::PinSource::Parse(o.password_source.empty() ? "prompt:PFX password: "
                                                                : o.password_source);
  if (!source.ok()) return source.status();
  return source->Read();
}

struct FileOutcome {
  std::string file;
  absl::Status status;  // the file's failure, if any
  v1::ImportArchivedKeyResponse result;
};

absl::Status ImportOne(Client& c, const std::string& file, const hsm::SecretString& password,
                       bool foreign, v1::ImportArchivedKeyResponse* result) {
  auto pfx = pki::ReadFileBytes(file, kMaxPfxBytes);
  if (!pfx.ok()) return pfx.status();
  v1::ImportArchivedKeyRequest request;
  request.set_pfx(std::string(pfx->begin(), pfx->end()));
  request.set_password(std::string(password.view()));
  request.set_foreign(foreign);
  auto ctx = c.Context();
  grpc::Status status = c.administration().ImportArchivedKey(ctx.get(), request, result);
  // The request held the password: wipe it before anything else.
  OPENSSL_cleanse(request.mutable_password()->data(), request.password().size());
  return c.Check(status);
}

nlohmann::json KeyJson(const v1::ImportedKey& k) {
  nlohmann::json j = {{"subject", k.subject()},
                      {"serial", k.serial()},
                      {"archived", k.archived()},
                      {"foreign", k.foreign()},
                      {"signature_only", k.signature_only()}};
  if (k.archived()) {
    j["request_id"] = k.request_id();
    j["kra_sha1"] = std::vector<std::string>(k.kra_sha1().begin(), k.kra_sha1().end());
  } else {
    char hr[16];
    std::snprintf(hr, sizeof hr, "0x%08x", k.status_code());
    j["hresult"] = std::string(hr);
    j["message"] = k.message();
  }
  return j;
}

Reply Report(const std::vector<FileOutcome>& outcomes) {
  struct Counts {
    size_t files_failed = 0, files_unread = 0, ignored_signature = 0, with_keys = 0, foreign = 0,
           keys = 0, archived = 0;
    std::set<std::string> users;
  } n;
  nlohmann::json files = nlohmann::json::array();
  std::string text;
  const v1::ImportArchivedKeyResponse* first_ok = nullptr;
  for (const FileOutcome& o : outcomes) {
    nlohmann::json f = {{"file", o.file}, {"ok", o.status.ok()}};
    if (!o.status.ok()) {
      ++n.files_failed;
      const auto hr = PayloadOf(o.status, kHResultPayload);
      const bool file_level = !hr || std::find(std::begin(kFileLevel), std::end(kFileLevel), *hr) !=
                                         std::end(kFileLevel);
      if (file_level) {
        ++n.files_unread;
      } else {
        // The daemon opened the file and refused its key (the first one).
        ++n.keys;
        ++n.with_keys;
        if (*hr == "0x8009000a") ++n.ignored_signature;
      }
      f["error"] = std::string(o.status.message());
      f["hresult"] = hr ? nlohmann::json(*hr) : nlohmann::json(nullptr);
      f["exit_code"] = Output::ExitCodeFor(o.status);
      text += StrCat(o.file, ": FAILED: ", o.status.message(), "\n");
      files.push_back(std::move(f));
      continue;
    }
    if (first_ok == nullptr) first_ok = &o.result;
    nlohmann::json keys = nlohmann::json::array();
    for (const auto& k : o.result.keys()) {
      ++n.keys;
      if (!k.subject().empty()) ++n.with_keys;  // a key without its certificate has none
      keys.push_back(KeyJson(k));
      if (k.archived()) {
        ++n.archived;
        n.users.insert(k.subject());
        if (k.foreign()) ++n.foreign;
        text += StrCat(o.file, ": archived the key of ", k.subject(), " (serial ", k.serial(),
                       ", request ", k.request_id(), k.foreign() ? ", foreign" : "", ")\n");
      } else {
        if (k.signature_only()) ++n.ignored_signature;
        text += k.subject().empty() ? StrCat(o.file, ": not archived: ", k.message(), "\n")
                                    : StrCat(o.file, ": not archived: ", k.subject(), " (serial ",
                                             k.serial(), "): ", k.message(), "\n");
      }
    }
    f["keys"] = std::move(keys);
    files.push_back(std::move(f));
  }
  const size_t not_archived = n.keys - n.archived;
  // certutil -importKMS's summary lines, as the seed shows them ("Users: 6").
  const std::pair<const char*, size_t> lines[] = {
      {"Files", outcomes.size()},
      {"Files not read", n.files_unread},
      {"Users", n.users.size()},
      {"Ignored signature certificates", n.ignored_signature},
      {"Certificates with keys", n.with_keys},
      {"Foreign certificates imported", n.foreign},
      {"Keys", n.keys},
      {"Keys archived", n.archived},
      {"Keys not archived", not_archived}};
  text += "\n";
  for (const auto& [label, count] : lines) text += StrCat(label, ": ", count, "\n");
  text += n.files_failed == 0 ? "keywarden: importpfx completed successfully.\n"
                              : StrCat("keywarden: importpfx FAILED for ", n.files_failed, " of ",
                                       outcomes.size(), " file(s)\n");
  Reply reply;
  reply.json = {{"files", files},
                {"summary",
                 {{"files", outcomes.size()},
                  {"files_failed", n.files_failed},
                  {"files_not_read", n.files_unread},
                  {"users", n.users.size()},
                  {"ignored_signature_certificates", n.ignored_signature},
                  {"certificates_with_keys", n.with_keys},
                  {"foreign_certificates_imported", n.foreign},
                  {"keys", n.keys},
                  {"keys_archived", n.archived},
                  {"keys_not_archived", not_archived}}}};
  if (first_ok != nullptr) {
    // The first archived key, as the one-file answer always had it.
    reply.json["request_id"] = first_ok->request_id();
    reply.json["serial"] = first_ok->serial();
    reply.json["kra_sha1"] =
        std::vector<std::string>(first_ok->kra_sha1().begin(), first_ok->kra_sha1().end());
    reply.json["foreign"] = first_ok->foreign();
  }
  reply.text = std::move(text);
  if (n.files_failed > 0) {
    // One file: its own exit code (3 refused, 2 bad input...); a batch: 1.
    reply.exit_code =
        outcomes.size() == 1 ? Output::ExitCodeFor(outcomes.front().status) : kExitFailed;
  }
  return reply;
}

}  // namespace

void RegisterImportCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action) {
  auto opts = std::make_shared<ImportOptions>();
  CLI::App* import = app.add_subcommand(
      "importpfx",
      "Archive the private keys of PKCS#12 (PFX) files in the CA database, like certutil -f "
      "-importKMS (CA Administrator)");
  import->footer(
      "Each FILE is a DER PKCS#12; each DIR contributes its *.pfx and *.p12 files. Every key\n"
      "with its certificate is archived, encrypted to the CA's Key Recovery Agents. Files\n"
      "protected with RC2 or 3DES (the Windows XP/2003 export default) are read too. One\n"
      "password is asked once and used for every file. A file that fails does not stop the\n"
      "others; each is reported, then the summary (Users, Keys archived, ...) as certutil\n"
      "-importKMS prints it. Exit code 0 when every file was imported; otherwise 1 (or, for\n"
      "a single file, its own code: 3 refused, 2 bad input, 4 not found).");
  import->add_option("files", opts->inputs, "PKCS#12 files (DER) and/or directories of them")
      ->required();
  import->add_option("-p,--password", opts->password,
                     "The PFX password, for every file (visible to other users in the process "
                     "list: prefer --password-source)");
  import->add_option("--password-source", opts->password_source,
                     "Where the PFX password comes from: file:PATH, env:NAME or prompt (default)");
  import->add_flag("-f,--foreign", opts->foreign,
                   "Also accept certificates issued by another CA (needs KRAF_ENABLEFOREIGN on "
                   "the CA: [flags] enable_foreign = true)");
  import->callback([&out, &conn, &action, opts] {
    action = WithClient(out, conn, [opts](Client& c) -> absl::StatusOr<Reply> {
      auto files = ExpandInputs(opts->inputs);
  if (!files.ok()) return files.status();
  auto password = BatchPassword(*opts);
  if (!password.ok()) return password.status();
  std::vector<FileOutcome> outcomes;
  for (const std::string& file : *files) {
    FileOutcome o;
    o.file = file;
    o.status = ImportOne(c, file, *password, opts->foreign, &o.result);
    outcomes.push_back(std::move(o));
  }
  return Report(outcomes);
});
}  // namespace keywarden::cli
);
}

}  // namespace keywarden::cli
