// keywarden kra rewrap: KRA rollover (issue 17 item 3; docs/OPERATIONS.md,
// "KRA rollover"). A KRA with its card, connected as a Certificate Manager
// (the role that may fetch recovery blobs), re-encrypts the content key of
// selected archives to the KRAs the CA uses now:
//   1. the archives: by getkey search (--search, repeatable) or every one
//      encrypted to a KRA (--encrypted-to SHA1);
//   2. for each: the recovery blob (signature checked against --ca-cert)
//      and the CA's currently valid KRA certificates, each checked here
//      again (KRA EKU, validity, chain to --ca-cert, not on the CA's CRL or
//      a --crl given for another issuer);
//   3. the card unwraps the content key into a session object and wraps it
//      to each new KRA (pki::KraCard::Rewrap); the archived private key is
//      never decrypted; the encrypted content stays byte for byte. The new
//      envelope takes the CA's current form (rewrap_threshold k'): k' >= 2
//      a fresh split (docs/THRESHOLD.md, "Rewrap"). A threshold archive
//      needs k cards: k - 1 KRAs run this with --contribute-to KRA
//      --out-dir DIR (ContributeForRewrap), the coordinator with
//      --shares-dir DIR,... (pki::KraCard::RewrapThreshold);
//   4. Officer/RewrapArchivedKey: the CA checks and stores it, keeping the
//      old envelope in its archive history.
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <set>

#include <sys/stat.h>

#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/share_files.h"
#include "hsm/pin.h"
#include "hsm/strings.h"
#include "hsm/uri.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "pki/kra_card.h"
#include "pki/recovery_blob.h"
#include "pki/rewrap.h"

namespace keywarden::cli {
namespace {

constexpr char kKraEku[] = "1.3.6.1.4.1.311.21.6";

struct RewrapOptions {
  std::vector<std::string> search;
  std::string encrypted_to;
  std::string card;
  std::string module;
  std::string pin_source;
  std::vector<std::string> trust;
  std::vector<std::string> crls;
  // Threshold archives (docs/THRESHOLD.md, "Rewrap"): the coordinator's
  // contributions, and a contributor's side.
  std::vector<std::string> shares;       // contribution files (one archive)
  std::vector<std::string> shares_dirs;  // directories of NAME.DIGEST.kwshare
  std::string contribute_to;             // KRA (SHA-1 or subject) to seal this card's share to
  std::string out_dir;                   // where --contribute-to writes
};

std::string Subject(X509* cert) {
  return pki::FormatName(X509_get_subject_name(cert));
}

std::vector<uint8_t> Sha256(std::span<const uint8_t> data) {
  std::vector<uint8_t> out(32);
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

ossl::UniquePtr<X509> ParseDer(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  return ossl::UniquePtr<X509>(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

ossl::UniquePtr<X509_CRL> ParseCrl(std::span<const uint8_t> bytes) {
  const unsigned char* p = bytes.data();
  X509_CRL* crl = d2i_X509_CRL(nullptr, &p, static_cast<long>(bytes.size()));
  if (crl == nullptr) {
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    crl = bio ? PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr) : nullptr;
  }
  ERR_clear_error();
  return ossl::UniquePtr<X509_CRL>(crl);
}

bool HasEku(X509* cert, const char* oid) {
  auto* ekus =
      static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(cert, NID_ext_key_usage, nullptr, nullptr));
  if (ekus == nullptr) return false;
  bool found = false;
  for (int i = 0; i < sk_ASN1_OBJECT_num(ekus); ++i) {
    char text[128];
    OBJ_obj2txt(text, sizeof text, sk_ASN1_OBJECT_value(ekus, i), 1);
    found = found || std::string(text) == oid;
  }
  EXTENDED_KEY_USAGE_free(ekus);
  return found;
}

// A new recipient, checked as the CA's KRA registry checks it: KRA EKU, an
// RSA key, within its validity, chaining to a trusted CA, and not revoked
// by a CRL of its issuer (no CRL: refused, like the registry's
// "revocation-offline").
absl::Status CheckKra(X509* kra, const std::vector<X509*>& trusted,
                      const std::vector<X509_CRL*>& crls) {
  const std::string who = StrCat("KRA certificate \"", Subject(kra), "\" (SHA-1 ",
                                 pki::Sha1Thumbprint(kra), ") from the CA");
  if (!HasEku(kra, kKraEku)) {
    return absl::FailedPreconditionError(
        StrCat(who, " has no Key Recovery Agent EKU (", kKraEku, "): not used"));
  }
  if (!EVP_PKEY_is_a(X509_get0_pubkey(kra), "RSA")) {
    return absl::FailedPreconditionError(StrCat(who, " has no RSA key: not used"));
  }
  ossl::UniquePtr<X509_STORE> store(X509_STORE_new());
  for (X509* t : trusted) X509_STORE_add_cert(store.get(), t);
  for (X509_CRL* c : crls) X509_STORE_add_crl(store.get(), c);
  X509_STORE_set_flags(store.get(), X509_V_FLAG_CRL_CHECK);
  ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), kra, nullptr) != 1) {
    return absl::InternalError("cannot set up certificate verification");
  }
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_ANY);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    std::string why = X509_verify_cert_error_string(err);
    if (err == X509_V_ERR_UNABLE_TO_GET_CRL) {
      why += ": give its issuer's current CRL with --crl (the CA's own CRL is fetched)";
    } else if (err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
               err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT) {
      why += ": give its issuer with --ca-cert";
    }
    return absl::FailedPreconditionError(StrCat(who, " does not verify: ", why, "; not used"));
  }
  return absl::OkStatus();
}

// The archives to rewrap: (request id, serial), each once.
absl::StatusOr<std::vector<v1::ArchivedKeyCandidate>> SelectArchives(Client& c,
                                                                     const RewrapOptions& o) {
  std::vector<v1::ArchivedKeyCandidate> out;
  std::set<int64_t> seen;
  auto add = [&](const v1::ArchivedKeyCandidate& k) {
    if (seen.insert(k.request_id()).second) out.push_back(k);
  };
  auto list = [&](const std::string& search) -> absl::StatusOr<v1::GetArchivedKeyResponse> {
    v1::GetArchivedKeyRequest in;
    in.set_search(search);
    v1::GetArchivedKeyResponse res;
    auto ctx = c.Context();
    if (auto st = c.Check(c.officer().GetArchivedKey(ctx.get(), in, &res)); !st.ok()) return st;
    return res;
  };
  for (const std::string& s : o.search) {
    auto res = list(s);
    if (!res.ok()) return res.status();
    if (res->candidates_size() == 0) {
      return absl::NotFoundError(StrCat("no archived key matches \"", s, "\""));
    }
    for (const auto& k : res->candidates()) add(k);
  }
  if (!o.encrypted_to.empty()) {
    const std::string want = AsciiLower(o.encrypted_to);
    v1::ListRequestsRequest in;
    in.set_disposition(v1::DISPOSITION_ISSUED);
    in.set_limit(10000);
    v1::ListRequestsResponse requests;
    auto ctx = c.Context();
    if (auto st = c.Check(c.officer().ListRequests(ctx.get(), in, &requests)); !st.ok()) return st;
    for (const auto& r : requests.requests()) {
      if (!r.has_archived_key()) continue;
      auto res = list(std::to_string(r.request_id()));
      if (!res.ok()) return res.status();
      for (const auto& k : res->candidates()) {
        if (k.request_id() != r.request_id()) continue;
        if (std::find(k.kra_sha1().begin(), k.kra_sha1().end(), want) != k.kra_sha1().end()) {
          add(k);
        }
      }
    }
  }
  return out;
}

// kra rewrap --contribute-to KRA --out-dir DIR: this card's share of a
// threshold archive sealed to the coordinating KRA (one of the archive's
// share holders, by SHA-1 or subject), written as DIR/SERIAL.DIGEST.kwshare.
// Returns the file written.
absl::StatusOr<std::string> ContributeForRewrap(pki::KraCard& card, const pki::RecoveryBlob& blob,
                                                const RewrapOptions& o, const std::string& serial) {
  if (!blob.threshold) {
    return absl::FailedPreconditionError(
        "not a threshold archive: no contribution is needed (one of its KRAs rewraps it alone)");
  }
  X509* coordinator = nullptr;
  std::vector<std::string> holders;
  for (const auto& r : blob.recipients) {
    if (r.certificate == nullptr) continue;
    holders.push_back(StrCat("\"", Subject(r.certificate), "\" (SHA-1 ",
                             pki::Sha1Thumbprint(r.certificate), ")"));
    if (AsciiLower(pki::Sha1Thumbprint(r.certificate)) == AsciiLower(o.contribute_to) ||
        Subject(r.certificate) == o.contribute_to) {
      coordinator = r.certificate;
    }
  }
  if (coordinator == nullptr) {
    return absl::NotFoundError(StrCat("--contribute-to ", o.contribute_to,
                                      ": no KRA of this archive has that SHA-1 or subject. Its "
                                      "KRAs:\n  ",
                                      StrJoin(holders, "\n  ")));
  }
  auto sealed = card.Contribute(blob, coordinator);
  if (!sealed.ok()) return sealed.status();
  const std::string file =
      StrCat(o.out_dir, "/", ContributionFileName(serial, blob.enveloped_data));
  if (auto st = pki::WriteFileAtomically(file, *sealed, pki::Overwrite::kRefuse, 0600); !st.ok()) {
    return st;
  }
  return file;
}

absl::StatusOr<Reply> RunRewrap(Client& c, const RewrapOptions& o) {
  if (o.search.empty() && o.encrypted_to.empty()) {
    return absl::InvalidArgumentError(
        "select the archives to rewrap with --search TOKEN (as getkey) and/or --encrypted-to "
        "KRA-SHA1");
  }
  if (o.card.empty()) {
    return absl::InvalidArgumentError(
        "give the KRA smart card with --card PKCS11-URI (e.g. pkcs11:token=kra-card-1)");
  }
  if (!o.contribute_to.empty() && o.out_dir.empty()) {
    return absl::InvalidArgumentError(
        "--contribute-to needs --out-dir DIR for the sealed shares (one NAME.DIGEST.kwshare per "
        "threshold archive)");
  }
  if (!o.contribute_to.empty() && (!o.shares.empty() || !o.shares_dirs.empty())) {
    return absl::InvalidArgumentError(
        "--contribute-to (this KRA gives its shares) and --shares/--shares-dir (this KRA "
        "coordinates) exclude each other");
  }
  if (!o.out_dir.empty()) {
    struct stat st {};
    if (stat(o.out_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::NotFoundError(StrCat("--out-dir ", o.out_dir, ": not a directory"));
    }
  }
  // Contributions are read before the card is touched: a missing file costs
  // no PIN.
  std::vector<std::pair<std::string, std::vector<uint8_t>>> share_files;
  for (const std::string& f : o.shares) {
    auto bytes = pki::ReadFileBytes(f);
    if (!bytes.ok()) return bytes.status();
    if (bytes->size() > kMaxContributionBytes) {
      return absl::InvalidArgumentError(
          StrCat(f, ": ", bytes->size(), " bytes is too large for a share contribution"));
    }
    share_files.emplace_back(f, std::move(*bytes));
  }
  ShareDirectories share_dirs;
  if (!o.shares_dirs.empty()) {
    auto read = ReadShareDirectories(o.shares_dirs);
    if (!read.ok()) return read.status();
    share_dirs = std::move(*read);
  }
  if (o.trust.empty()) {
    return absl::InvalidArgumentError(
        "give the CA certificate(s) to trust with --ca-cert: blobs and KRA certificates are "
        "only used when they chain to one");
  }
  std::vector<ossl::UniquePtr<X509>> anchors;
  for (const std::string& f : o.trust) {
    auto certs = pki::ReadPemCertificates(f);
    if (!certs.ok()) return certs.status();
    for (auto& x : *certs) anchors.push_back(std::move(x));
  }
  std::vector<ossl::UniquePtr<X509_CRL>> crls;
  for (const std::string& f : o.crls) {
    auto bytes = pki::ReadFileBytes(f);
    if (!bytes.ok()) return bytes.status();
    auto crl = ParseCrl(*bytes);
    if (!crl) return absl::InvalidArgumentError(StrCat(f, ": not a DER or PEM CRL"));
    crls.push_back(std::move(crl));
  }
  {  // The CA's own current CRL, for the KRAs it issued (verified below with the chain).
    v1::Crl crl;
    auto ctx = c.Context();
    if (auto st = c.Check(c.enrollment().GetCrl(ctx.get(), v1::GetCrlRequest(), &crl)); st.ok()) {
      auto parsed = ParseCrl(std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(crl.crl().data()), crl.crl().size()));
      if (parsed) crls.push_back(std::move(parsed));
    }
  }

  auto uri = hsm::Pkcs11Uri::Parse(o.card);
  if (!uri.ok()) return uri.status();
  absl::StatusOr<hsm::PinSource> pin = absl::UnknownError("unset");
  if (o.pin_source.empty() && uri->pin_source().empty() && uri->has_pin_value()) {
    pin = hsm::PinSource::Value(uri->pin_value());
  } else {
    pin = hsm::PinSource::Parse(!o.pin_source.empty()        ? o.pin_source
                                : !uri->pin_source().empty() ? uri->pin_source()
                                                             : "prompt:PIN for the KRA card: ");
  }
  if (!pin.ok()) return pin.status();
  auto card = pki::KraCard::Open(*uri, DefaultModule(o.module));
  if (!card.ok()) return card.status();

  auto archives = SelectArchives(c, o);
  if (!archives.ok()) return archives.status();
  if (!share_files.empty() && archives->size() > 1) {
    return absl::InvalidArgumentError(
        StrCat("--shares are the contributions for one archive, but ", archives->size(),
               " are selected: give --shares-dir DIR (contributions written with kra rewrap "
               "--contribute-to KRA --out-dir DIR) instead"));
  }

  Reply reply;
  nlohmann::json results = nlohmann::json::array();
  std::string text;
  size_t done = 0, skipped = 0, failed = 0, contributed = 0;
  for (const auto& k : *archives) {
    const std::string name =
        StrCat("request ", k.request_id(), " (serial ", k.certificate().serial(), ", \"",
               k.certificate().subject(), "\")");
    nlohmann::json item = {{"request_id", k.request_id()},
                           {"serial", k.certificate().serial()},
                           {"subject", k.certificate().subject()}};
    auto fail = [&](const absl::Status& st) {
      ++failed;
      item["result"] = "failed";
      item["error"] = std::string(st.message());
      text += StrCat(name, ": FAILED: ", st.message(), "\n");
      results.push_back(item);
    };
    v1::GetArchivedKeyRequest in;
    in.set_search(k.certificate().serial());
    in.set_blob(true);
    in.set_rewrap_targets(true);
    v1::GetArchivedKeyResponse res;
    auto ctx = c.Context();
    if (auto st = c.Check(c.officer().GetArchivedKey(ctx.get(), in, &res)); !st.ok()) {
      fail(st);
      continue;
    }
    const std::string& raw = res.recovery_blob();
    auto blob = pki::ParseRecoveryBlob(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()),
        anchors);
    if (!blob.ok()) {
      fail(blob.status());
      continue;
    }
    // The CA chain that signed the blob is trusted for the KRA chains too.
    std::vector<X509*> trusted;
    for (const auto& a : anchors) trusted.push_back(a.get());
    trusted.push_back(blob->signer.get());
    for (const auto& x : blob->signer_chain) trusted.push_back(x.get());
    std::vector<X509_CRL*> crl_ptrs;
    for (const auto& x : crls) crl_ptrs.push_back(x.get());
    std::vector<ossl::UniquePtr<X509>> targets;
    std::vector<X509*> target_ptrs;
    absl::Status checked = absl::OkStatus();
    for (const std::string& der : res.rewrap_kras()) {
      auto cert = ParseDer(der);
      if (!cert) {
        checked = absl::DataLossError("a KRA certificate from the CA does not parse");
        break;
      }
      if (absl::Status st = CheckKra(cert.get(), trusted, crl_ptrs); !st.ok()) {
        checked = st;
        break;
      }
      target_ptrs.push_back(cert.get());
      targets.push_back(std::move(cert));
    }
    if (checked.ok() && targets.empty()) {
      checked = absl::FailedPreconditionError("the CA has no valid KRA now (keywarden kra list)");
    }
    if (!checked.ok()) {
      fail(checked);
      continue;
    }
    std::vector<std::string> target_sha1;
    for (X509* t : target_ptrs) target_sha1.push_back(pki::Sha1Thumbprint(t));
    item["kra_sha1"] = target_sha1;
    std::vector<std::string> current(k.kra_sha1().begin(), k.kra_sha1().end());
    item["previous_kra_sha1"] = current;
    // The CA's form now ([kra] threshold; 0 from a CA before this field: 1).
    const int target_k = std::max(1, res.rewrap_threshold());
    const int current_k = blob->threshold ? blob->threshold->k : 1;
    item["threshold"] = target_k;
    item["previous_threshold"] = current_k;
    if (target_k >= 2 && static_cast<size_t>(target_k) > target_ptrs.size()) {
      fail(absl::FailedPreconditionError(
          StrCat("the CA's [kra] threshold is ", target_k, " but only ", target_ptrs.size(),
                 " of its KRAs are valid now (keywarden kra list)")));
      continue;
    }
    auto sorted = [](std::vector<std::string> v) {
      std::sort(v.begin(), v.end());
      return v;
    };
    if (sorted(current) == sorted(target_sha1) && current_k == target_k) {
      ++skipped;
      item["result"] = "unchanged";
      text += StrCat(name, ": already encrypted to the current KRAs\n");
      results.push_back(item);
      continue;
    }
    if (!o.contribute_to.empty() && !blob->threshold) {
      ++skipped;
      item["result"] = "no contribution needed";
      text += StrCat(name,
                     ": not a threshold archive, no contribution needed (any one of its KRAs "
                     "rewraps it alone)\n");
      results.push_back(item);
      continue;
    }
    if (!(*card)->logged_in()) {
      auto match = (*card)->Match(*blob);
      if (!match.ok()) {
        fail(match.status());
        continue;
      }
      if (absl::Status st = (*card)->Login(*pin); !st.ok()) return st;  // one attempt, ever
    }
    if (!o.contribute_to.empty()) {
      auto written = ContributeForRewrap(**card, *blob, o, k.certificate().serial());
      if (!written.ok()) {
        fail(written.status());
        continue;
      }
      ++contributed;
      item["result"] = "contributed";
      item["share"] = *written;
      text += StrCat(name, ": share sealed to ", o.contribute_to, ": ", *written, "\n");
      results.push_back(item);
      continue;
    }
    absl::StatusOr<pki::RewrapResult> rewrapped = absl::UnknownError("unset");
    if (blob->threshold) {
      auto given = !share_files.empty() ? share_files : share_dirs.For(blob->enveloped_data);
      std::vector<std::vector<uint8_t>> contributions;
      std::vector<std::string> names;
      for (const auto& [file, bytes] : given) {
        names.push_back(file);
        contributions.push_back(bytes);
      }
      rewrapped = (*card)->RewrapThreshold(*blob, contributions, names, target_ptrs, target_k);
    } else if (!share_files.empty()) {
      rewrapped = absl::InvalidArgumentError(
          "--shares is for threshold archives; this one is rewrapped by any one of its KRAs");
    } else {
      rewrapped = (*card)->Rewrap(*blob, target_ptrs, target_k);
    }
    if (!rewrapped.ok()) {
      fail(rewrapped.status());
      continue;
    }
    v1::RewrapArchivedKeyRequest put;
    put.set_request_id(k.request_id());
    const auto previous = Sha256(blob->enveloped_data);
    put.set_previous_sha256(std::string(previous.begin(), previous.end()));
    put.set_enveloped_data(std::string(rewrapped->envelope.begin(), rewrapped->envelope.end()));
    v1::RewrapArchivedKeyResponse stored;
    auto put_ctx = c.Context();
    if (auto st = c.Check(c.officer().RewrapArchivedKey(put_ctx.get(), put, &stored)); !st.ok()) {
      fail(st);
      continue;
    }
    ++done;
    item["result"] = "rewrapped";
    item["history_version"] = stored.history_version();
    item["unwrapped_on_card"] = rewrapped->unwrapped_on_card;
    item["scheme"] = stored.scheme();
    if (rewrapped->combined_shares > 0) item["shares_combined"] = rewrapped->combined_shares;
    std::vector<std::string> now(stored.kra_sha1().begin(), stored.kra_sha1().end());
    item["kra_sha1"] = now;
    const std::string how =
        rewrapped->combined_shares > 0
            ? StrCat(" (", rewrapped->combined_shares,
                     " shares checked against their commitments and combined in locked, wiped "
                     "memory; ",
                     target_k >= 2 ? StrCat("split afresh, ", target_k, " of ", now.size(),
                                            " needed, randomness from the card")
                                   : std::string("wrapped to each KRA"),
                     ")")
        : target_k >= 2 ? StrCat(
                              " (content key decrypted on the card into locked, wiped memory "
                              "and split afresh, ",
                              target_k, " of ", now.size(), " needed)")
        : rewrapped->unwrapped_on_card
            ? std::string(" (content key unwrapped on the card)")
            : std::string(
                  " (the card key cannot unwrap: content key decrypted into locked, wiped "
                  "memory)");
    text += StrCat(name, ": rewrapped from ", StrJoin(current, ", "), " to ", StrJoin(now, ", "),
                   how, "\n");
    results.push_back(item);
  }
  if (!o.contribute_to.empty()) {
    text += StrCat(archives->size(), " archive(s): ", contributed, " share(s) sealed to ",
                   o.contribute_to, " in ", o.out_dir, ", ", skipped,
                   " already current or not threshold, ", failed, " failed\n");
  } else {
    text += StrCat(archives->size(), " archive(s): ", done, " rewrapped, ", skipped,
                   " already current, ", failed, " failed\n");
  }
  const std::vector<std::string> unused = share_dirs.Unused();
  if (!unused.empty()) {
    text += StrCat("not used (for no archive rewrapped here):\n  ", StrJoin(unused, "\n  "), "\n");
  }
  reply.json = {
      {"archives", results}, {"rewrapped", done}, {"unchanged", skipped}, {"failed", failed}};
  if (!o.contribute_to.empty()) reply.json["contributed"] = contributed;
  if (!unused.empty()) reply.json["shares_not_used"] = unused;
  reply.text = text;
  if (failed > 0) reply.exit_code = kExitFailed;
  return reply;
}

}  // namespace

void RegisterKraRewrap(CLI::App* kra, const Output& out, const ConnectionOptions& conn,
                       Action& action) {
  auto o = std::make_shared<RewrapOptions>();
  CLI::App* cmd = kra->add_subcommand(
      "rewrap",
      "KRA rollover: re-encrypt the content key of archived keys to the KRAs the CA uses now, "
      "with this KRA's card (run as a Certificate Manager; the archived private key is never "
      "decrypted; the CA keeps the old envelope in its history). The new envelope takes the CA's "
      "current form ([kra] threshold). A threshold archive needs k of its KRAs: k - 1 run "
      "`kra rewrap --search ... --card URI --contribute-to COORDINATOR --out-dir DIR`, the "
      "coordinator runs `kra rewrap --search ... --card URI --shares-dir DIR1,...`");
  cmd->add_option("--search", o->search,
                  "Archives matching this getkey search token (serial, SHA-1, request id, CN, "
                  "UPN, ...); repeatable");
  cmd->add_option("--encrypted-to", o->encrypted_to,
                  "Every issued archive one of whose recipients is this KRA (SHA-1 thumbprint "
                  "of its certificate)");
  cmd->add_option("--card", o->card,
                  "PKCS#11 URI of this KRA's smart card, e.g. pkcs11:token=kra-card-1");
  cmd->add_option("--module", o->module,
                  "PKCS#11 module path or p11-kit name (default: the URI's, else "
                  "$KEYWARDEN_PKCS11_MODULE)");
  cmd->add_option("--pin-source", o->pin_source,
                  "Card PIN from file:PATH, env:NAME or prompt. Tried once, never retried");
  cmd->add_option("--ca-cert,--trust", o->trust,
                  "PEM file of CA certificate(s) the blobs and the new KRA certificates must "
                  "chain to (repeatable; required)")
      ->allow_extra_args(false);
  cmd->add_option("--shares", o->shares,
                  "Threshold archives, this KRA coordinating (one archive): the shares k - 1 "
                  "other KRAs of it sealed to this card (comma-separated or repeated)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--shares-dir", o->shares_dirs,
                  "Threshold archives, this KRA coordinating (any number): directories of "
                  "contributions written by kra rewrap --contribute-to (NAME.DIGEST.kwshare, "
                  "matched to each archive by its SHA-256); comma-separated or repeated")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--contribute-to", o->contribute_to,
                  "Threshold archives, this KRA contributing: seal this card's share of each "
                  "selected archive to the coordinating KRA (SHA-1 or subject of its "
                  "certificate) instead of rewrapping; needs --out-dir")
      ->allow_extra_args(false);
  cmd->add_option("--out-dir", o->out_dir,
                  "--contribute-to: directory for the sealed shares (SERIAL.DIGEST.kwshare)");
  cmd->add_option("--crl", o->crls,
                  "CRL (DER or PEM) of the issuer of a KRA certificate not issued by this CA "
                  "(repeatable; this CA's own CRL is fetched)")
      ->allow_extra_args(false);
  cmd->callback([&out, &conn, &action, o] {
    action = WithClient(out, conn, [o](Client& c) { return RunRewrap(c, *o); });
  });
}

}  // namespace keywarden::cli
