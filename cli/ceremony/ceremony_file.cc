#include "cli/ceremony/ceremony_file.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "hsm/strings.h"
#include "hsm/uri.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "pki/pkcs10.h"
#include "service/toml_reader.h"

namespace keywarden::ceremony {
namespace {

using service::strict_toml::Choices;
using service::strict_toml::Context;
using service::strict_toml::NodeLine;
using service::strict_toml::Section;

constexpr char kNoPins[] =
    "PINs never go in a ceremony file: each token's holder types theirs at the prompt (for "
    "tests and CI only: keywarden ceremony run --automation-pin, not for production)";

bool IsPinKey(std::string_view key) {
  std::string k(key);
  std::transform(k.begin(), k.end(), k.begin(), [](unsigned char c) { return std::tolower(c); });
  std::replace(k.begin(), k.end(), '-', '_');
  return k == "pin" || k == "pins" || k == "passphrase" || k == "password" ||
         k.starts_with("pin_") || k.ends_with("_pin") || k.ends_with("_pins");
}

// A PIN anywhere in the file (a key named like one, or a PKCS#11 URI
// carrying pin-value / pin-source) is refused before anything else.
absl::Status RefusePins(const Context& ctx, const toml::node& node, const std::string& path) {
  if (const toml::table* t = node.as_table()) {
    for (auto&& [key, value] : *t) {
      const std::string child =
          path.empty() ? std::string(key.str()) : StrCat(path, ".", key.str());
      if (IsPinKey(key.str())) {
        const uint32_t line =
            key.source().begin.line != 0 ? key.source().begin.line : NodeLine(value);
        return ctx.Error(line, StrCat("key \"", child, "\": ", kNoPins));
      }
      if (auto st = RefusePins(ctx, value, child); !st.ok()) return st;
    }
  } else if (const toml::array* a = node.as_array()) {
    for (size_t i = 0; i < a->size(); ++i) {
      if (auto st = RefusePins(ctx, *a->get(i), StrCat(path, "[", i + 1, "]")); !st.ok()) return st;
    }
  } else if (const toml::value<std::string>* s = node.as_string()) {
    const std::string& v = s->get();
    if (v.starts_with("pkcs11:") &&
        (v.find("pin-value") != std::string::npos || v.find("pin-source") != std::string::npos)) {
      return ctx.Error(
          NodeLine(node),
          StrCat("key \"", path, "\": the URI carries a pin-value or pin-source. ", kNoPins));
    }
  }
  return absl::OkStatus();
}

bool Allowed(std::string_view value, std::span<const std::string_view> allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

std::string List(std::span<const std::string_view> allowed) {
  std::string out;
  for (std::string_view a : allowed) out += out.empty() ? std::string(a) : StrCat(", ", a);
  return out;
}

absl::Status ReadTokenUri(const Section& s, std::string_view key, std::string& out) {
  if (auto st = s.ReadRequiredString(key, out); !st.ok()) return st;
  auto uri = hsm::Pkcs11Uri::Parse(out);
  if (!uri.ok()) return s.Invalid(key, std::string(uri.status().message()));
  if (!uri->has_token_selector())
    return s.Invalid(key, "the URI must name the token (token= or serial=)");
  return absl::OkStatus();
}

absl::Status ReadSubject(const Section& s, std::string_view key, std::string& out) {
  if (auto st = s.ReadRequiredString(key, out); !st.ok()) return st;
  auto name = pki::ParseName(out);
  if (!name.ok()) return s.Invalid(key, std::string(name.status().message()));
  return absl::OkStatus();
}

absl::Status ReadPath(const Section& s, std::string_view key, std::string& out) {
  if (auto st = s.ReadRequiredString(key, out); !st.ok()) return st;
  out = s.ctx().ResolvePath(out);
  return absl::OkStatus();
}

absl::Status ReadAlgorithm(const Section& s, std::string_view key,
                           std::span<const std::string_view> allowed, std::string& out) {
  if (auto st = s.ReadString(key, out); !st.ok()) return st;
  if (!Allowed(out, allowed)) {
    return s.Invalid(
        key,
        StrCat("\"", out, "\" is not an allowed key type here (allowed: ", List(allowed), ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadCeremony(const Section& root, CeremonySpec& spec) {
  auto c = root.Table("ceremony");
  if (!c.ok()) return c.status();
  if (c->line() == 0 && !root.Has("ceremony")) return root.Missing("ceremony");
  if (auto st = c->CheckKeys({"name", "kind", "witnesses", "transcript"}); !st.ok()) return st;
  if (auto st = c->ReadRequiredString("name", spec.name); !st.ok()) return st;
  std::string kind;
  if (auto st = c->ReadRequiredString("kind", kind); !st.ok()) return st;
  if (kind == "root") {
    spec.kind = Kind::kRoot;
  } else if (kind == "subordinate") {
    spec.kind = Kind::kSubordinate;
  } else if (kind == "subordinate-install") {
    spec.kind = Kind::kSubordinateInstall;
  } else {
    return c->Invalid(
        "kind", StrCat("\"", kind, "\" is not one of: root, subordinate, subordinate-install"));
  }
  if (auto st = c->ReadStrings("witnesses", spec.witnesses); !st.ok()) return st;
  if (spec.witnesses.empty()) {
    return c->Invalid("witnesses",
                      "name at least one witness (they are recorded in the "
                      "transcript)");
  }
  for (const std::string& w : spec.witnesses) {
    if (w.empty()) return c->Invalid("witnesses", "a witness name is empty");
  }
  return ReadPath(*c, "transcript", spec.transcript);
}

absl::Status ReadCa(const Section& root, CeremonySpec& spec) {
  auto s = root.Table("ca");
  if (!s.ok()) return s.status();
  if (!root.Has("ca")) return root.Missing("ca");
  CeremonySpec::Ca& ca = spec.ca;
  const Kind kind = spec.kind;
  if (auto st = s->CheckKeys({"name", "module", "token", "key_label", "key_algorithm", "subject",
                              "digest", "pss", "validity_days", "path_length", "certificate",
                              "request", "issued_certificate", "parent_chain", "chain"});
      !st.ok()) {
    return st;
  }
  using K = Kind;
  for (auto [key, kinds] : std::initializer_list<std::pair<const char*, std::vector<Kind>>>{
           {"name", {K::kRoot, K::kSubordinateInstall}},
           {"key_algorithm", {K::kRoot, K::kSubordinate}},
           {"subject", {K::kRoot, K::kSubordinate}},
           {"validity_days", {K::kRoot}},
           {"path_length", {K::kRoot}},
           {"certificate", {K::kRoot, K::kSubordinateInstall}},
           {"request", {K::kSubordinate}},
           {"issued_certificate", {K::kSubordinateInstall}},
           {"parent_chain", {K::kSubordinateInstall}},
           {"chain", {K::kSubordinateInstall}}}) {
    if (s->Has(key) && std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) {
      return s->Invalid(key, StrCat("not used by a \"", KindName(kind), "\" ceremony"));
    }
  }
  if (auto st = s->ReadString("module", ca.module); !st.ok()) return st;
  if (auto st = ReadTokenUri(*s, "token", ca.token); !st.ok()) return st;
  if (auto st = s->ReadRequiredString("key_label", ca.key_label); !st.ok()) return st;
  if (auto st = s->ReadChoice("digest", {"SHA256", "SHA384", "SHA512"}, ca.digest); !st.ok()) {
    return st;
  }
  if (auto st = s->ReadBool("pss", ca.pss); !st.ok()) return st;
  if (kind != K::kSubordinate) {
    if (auto st = s->ReadRequiredString("name", ca.name); !st.ok()) return st;
  }
  if (kind != K::kSubordinateInstall) {
    if (auto st = ReadAlgorithm(*s, "key_algorithm", kCaKeyAlgorithms, ca.key_algorithm);
        !st.ok()) {
      return st;
    }
    if (ca.pss && ca.key_algorithm.starts_with("ec")) {
      return s->Invalid("pss", "RSASSA-PSS needs an RSA key");
    }
    if (auto st = ReadSubject(*s, "subject", ca.subject); !st.ok()) return st;
  }
  switch (kind) {
    case K::kRoot:
      if (auto st = s->ReadInt("validity_days", 1, 9125, ca.validity_days); !st.ok()) return st;
      if (auto st = s->ReadInt("path_length", 0, 16, ca.path_length); !st.ok()) return st;
      return ReadPath(*s, "certificate", ca.certificate);
    case K::kSubordinate:
      return ReadPath(*s, "request", ca.request);
    case K::kSubordinateInstall:
      if (auto st = ReadPath(*s, "issued_certificate", ca.issued_certificate); !st.ok()) return st;
      if (auto st = ReadPath(*s, "parent_chain", ca.parent_chain); !st.ok()) return st;
      if (auto st = ReadPath(*s, "certificate", ca.certificate); !st.ok()) return st;
      return ReadPath(*s, "chain", ca.chain);
  }
  return absl::OkStatus();
}

absl::Status ReadKra(const Section& root, CeremonySpec& spec) {
  if (spec.kind == Kind::kSubordinate) {
    for (const char* table : {"kra", "config"}) {
      if (root.Has(table)) {
        return root.Invalid(table,
                            "a \"subordinate\" ceremony only makes the CA key and its "
                            "request: KRA cards and the configuration come in its "
                            "\"subordinate-install\" ceremony");
      }
    }
    return absl::OkStatus();
  }
  auto s = root.Table("kra");
  if (!s.ok()) return s.status();
  if (!root.Has("kra")) return root.Missing("kra");
  CeremonySpec::Kra& kra = spec.kra;
  if (auto st =
          s->CheckKeys({"key_algorithm", "validity_days", "count", "archival_scheme", "card"});
      !st.ok()) {
    return st;
  }
  if (auto st = ReadAlgorithm(*s, "key_algorithm", kKraKeyAlgorithms, kra.key_algorithm);
      !st.ok()) {
    return st;
  }
  if (auto st = s->ReadInt("validity_days", 1, 3650, kra.validity_days); !st.ok()) return st;
  if (auto st = s->ReadChoice("archival_scheme", {"des3-rsa-pkcs1", "aes256-rsa-oaep"},
                              kra.archival_scheme);
      !st.ok()) {
    return st;
  }
  std::vector<Section> cards;
  if (auto st = s->Tables("card", cards); !st.ok()) return st;
  if (cards.empty()) {
    return s->Invalid("card", "list at least one KRA smart card ([[kra.card]])");
  }
  if (!s->Has("count")) return s->Missing("count");
  if (auto st = s->ReadInt("count", 1, static_cast<int64_t>(cards.size()), kra.count); !st.ok()) {
    return st;
  }
  std::set<std::string> tokens;
  for (const Section& c : cards) {
    CardSpec card;
    card.line = c.line();
    if (auto st = c.CheckKeys({"token", "holder", "subject", "key_label", "certificate"});
        !st.ok()) {
      return st;
    }
    if (auto st = ReadTokenUri(c, "token", card.token); !st.ok()) return st;
    if (!tokens.insert(card.token).second || card.token == spec.ca.token) {
      return c.Invalid("token", StrCat(card.token,
                                       " is named twice: each KRA key goes on a card "
                                       "of its own, apart from the CA token"));
    }
    if (auto st = c.ReadRequiredString("holder", card.holder); !st.ok()) return st;
    if (auto st = ReadSubject(c, "subject", card.subject); !st.ok()) return st;
    if (auto st = c.ReadString("key_label", card.key_label); !st.ok()) return st;
    if (card.key_label.empty()) return c.Invalid("key_label", "must not be empty");
    if (auto st = ReadPath(c, "certificate", card.certificate); !st.ok()) return st;
    kra.cards.push_back(std::move(card));
  }
  auto cfg = root.Table("config");
  if (!cfg.ok()) return cfg.status();
  if (!root.Has("config")) return root.Missing("config");
  if (auto st = cfg->CheckKeys({"fragment", "hsm_pin_source"}); !st.ok()) return st;
  if (auto st = ReadPath(*cfg, "fragment", spec.config.fragment); !st.ok()) return st;
  if (auto st = cfg->ReadString("hsm_pin_source", spec.config.hsm_pin_source); !st.ok()) return st;
  const std::string& where = spec.config.hsm_pin_source;
  if (!where.starts_with("file:") && !where.starts_with("env:")) {
    return cfg->Invalid("hsm_pin_source",
                        "must be file:PATH or env:NAME: where keywardend will read its PIN "
                        "(the ceremony never reads it)");
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view KindName(Kind kind) {
  switch (kind) {
    case Kind::kRoot:
      return "root";
    case Kind::kSubordinate:
      return "subordinate";
    case Kind::kSubordinateInstall:
      return "subordinate-install";
  }
  return "unknown";
}

std::vector<std::string> CeremonySpec::Outputs() const {
  std::vector<std::string> out;
  for (const std::string* p : {&ca.certificate, &ca.request, &ca.chain}) {
    if (!p->empty()) out.push_back(*p);
  }
  for (const CardSpec& c : kra.cards) out.push_back(c.certificate);
  if (!config.fragment.empty()) out.push_back(config.fragment);
  out.push_back(transcript);
  return out;
}

absl::StatusOr<CeremonySpec> ParseCeremonyText(std::string_view text, const std::string& source,
                                               const std::string& base_dir) {
  auto parsed = service::strict_toml::Parse(text, source);
  if (!parsed.ok()) return parsed.status();
  Context ctx(source, base_dir);
  if (auto st = RefusePins(ctx, *parsed, ""); !st.ok()) return st;
  Section root(ctx, &*parsed, "");
  if (auto st = root.CheckKeys({"ceremony", "ca", "kra", "config"}); !st.ok()) return st;
  CeremonySpec spec;
  spec.path = source;
  try {
    if (auto st = ReadCeremony(root, spec); !st.ok()) return st;
    if (auto st = ReadCa(root, spec); !st.ok()) return st;
    if (auto st = ReadKra(root, spec); !st.ok()) return st;
  } catch (const std::exception& e) {  // std::bad_alloc, std::filesystem errors
    return absl::InternalError(StrCat(source, ": ", e.what()));
  }
  // Two steps writing one file would make the second refuse half-way.
  std::set<std::string> seen;
  for (const std::string& out : spec.Outputs()) {
    const std::string norm = std::filesystem::path(out).lexically_normal().string();
    if (!seen.insert(norm).second) {
      return ctx.Error(0, StrCat("the output ", out, " is named twice"));
    }
  }
  spec.sha256 = pki::Sha256Hex(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  return spec;
}

absl::StatusOr<CeremonySpec> ParseCeremonyFile(const std::string& path) {
  auto bytes = pki::ReadFileBytes(path, 1 << 20);
  if (!bytes.ok()) return bytes.status();
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return ParseCeremonyText(
      std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), path,
      dir.empty() ? "." : dir);
}

}  // namespace keywarden::ceremony
