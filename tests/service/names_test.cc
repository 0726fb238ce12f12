// Names, end to end with a real keywardend (issue 13, items 1 and 5):
// - recovery search is exact and explainable: getkey user@domain finds by
//   UPN, getkey 'DOMAIN\user' through the [[account]] directory only, a
//   near miss (other domain, other case, part of a name) finds nothing and
//   says what it tried, --json lists ambiguous candidates as objects;
// - issued certificates carry the subjectAltName (from the directory or,
//   where the template allows, the request, checked against the
//   directory), the certificate-template extension and the request's
//   S/MIME capabilities (with the real Windows vectors).
// Every certificate is read back with `openssl x509 -text` and with
// python3-cryptography, and expected encodings are computed in Python.
#include <openssl/x509.h>

#include <fstream>
#include <regex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "service/ca/issuer.h"
#include "service/storage/store.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;
using nlohmann::json;

constexpr char kNamesToml[] = R"(
[[template]]
name = "MailArchival"
oid = "1.3.6.1.4.1.311.21.8.7.7"
major_version = 101
minor_version = 3
key_usage = ["keyEncipherment"]
extended_key_usage = ["emailProtection"]
archival = "required"
subject = "principal"
san = "directory"

[[template]]
name = "MailRequest"
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["emailProtection"]
subject = "principal"
san = "request"
san_names = ["upn", "email", "dns"]

[[template]]
name = "SmimeArchival"
key_usage = ["keyEncipherment"]
extended_key_usage = ["emailProtection"]
archival = "required"
subject = "principal"
san = "directory"
san_names = ["email"]
smime_capabilities = true

[[account]]
principal = "CN=alice,O=keywarden test"
upn = "alice@corp.example"
logon_name = 'CORP\alice'
email = "alice@example.com"

[[account]]
principal = "CN=Frank Foreign,O=Other Org"
upn = "frank@corp.example"
logon_name = 'CORP\fra'
email = "frank@example.com"

[[account]]
principal = "CN=officer,O=keywarden test"
upn = "officer@corp.example"
)";

// Reads a certificate with python3-cryptography: its SAN names, every
// extension cryptography does not know (hex of the value), its serial and
// validity; and the template extension values expected for argv[2..],
// encoded here from scratch (DER by hand, not by keywarden).
constexpr char kReadCertPy[] = R"PY(
import json, sys
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

def der_len(n):
    if n < 0x80: return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, 'big')
    return bytes([0x80 | len(b)]) + b
def tlv(tag, body): return bytes([tag]) + der_len(len(body)) + body
def der_oid(dotted):
    parts = [int(p) for p in dotted.split('.')]
    body = bytes([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7f]
        p >>= 7
        while p:
            chunk.insert(0, 0x80 | (p & 0x7f)); p >>= 7
        body += bytes(chunk)
    return tlv(0x06, body)
def der_int(n):
    b = n.to_bytes(max(1, (n.bit_length() + 8) // 8), 'big')
    return tlv(0x02, b)

cert = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())
out = {"upn": [], "email": [], "dns": [], "other": [], "ext": {}, "critical": {}}
for e in cert.extensions:
    out["critical"][e.oid.dotted_string] = e.critical
    if isinstance(e.value, x509.UnrecognizedExtension):
        out["ext"][e.oid.dotted_string] = e.value.value.hex()
    elif isinstance(e.value, x509.MSCertificateTemplate):
        # Known to cryptography: its fields, and its DER as cryptography writes it.
        out["template_v2"] = {"oid": e.value.template_id.dotted_string,
                              "major": e.value.major_version, "minor": e.value.minor_version}
        out["ext"][e.oid.dotted_string] = e.value.public_bytes().hex()
try:
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    for n in san:
        if isinstance(n, x509.OtherName) and n.type_id.dotted_string == "1.3.6.1.4.1.311.20.2.3":
            v = n.value
            assert v[0] == 0x0c and v[1] == len(v) - 2, v.hex()  # UTF8String
            out["upn"].append(v[2:].decode('utf-8'))
        elif isinstance(n, x509.RFC822Name): out["email"].append(n.value)
        elif isinstance(n, x509.DNSName): out["dns"].append(n.value)
        else: out["other"].append(str(n))
except x509.ExtensionNotFound:
    out["no_san"] = True
s = format(cert.serial_number, 'x')
out["serial"] = ('0' + s) if len(s) % 2 else s
out["not_before"] = cert.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
out["not_after"] = cert.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
if len(sys.argv) == 5:
    out["expected_v2"] = tlv(0x30, der_oid(sys.argv[2]) + der_int(int(sys.argv[3])) +
                             der_int(int(sys.argv[4]))).hex()
if len(sys.argv) == 3:
    out["expected_v1"] = tlv(0x1e, sys.argv[2].encode('utf-16-be')).hex()
print(json.dumps(out))
)PY";

class NamesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonHarness::Options options;
    // The Windows vectors name CN=Issuer2 as the CA of their exchange key.
    options.ca_subject = "CN=Issuer2";
    options.extra_flags = "enable_foreign = true";
    options.extra_toml = std::string(kKraTemplateToml) + kNamesToml;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    auto cert = EnrollKraCard(*daemon_, SoftHsmFixture::kKraCard1);
    ASSERT_TRUE(cert.ok()) << cert.status();
    ASSERT_TRUE(UseKras(*daemon_, {pki::Sha1Thumbprint(cert->get())}, 1).ok());
    WriteFile(tmp_.File("readcert.py"), std::string(kReadCertPy));
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }
  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }

  // python3-cryptography's reading of a PEM certificate (kReadCertPy).
  json ReadCert(const std::string& pem, const std::string& args = "") const {
    auto r = RunCommand(StrCat("python3 ", tmp_.File("readcert.py"), " ", pem, " ", args));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    json j = json::parse(r.output, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.output;
    return j;
  }
  std::string OpensslText(const std::string& pem) const {
    auto r = RunCommand(StrCat("openssl x509 -text -noout -in ", pem));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  }

  // A key-encipherment certificate from a CA that is not this one, with
  // `san` (openssl syntax), as a PKCS#12 protected by "pw".
  std::string ForeignPfx(const std::string& name, const std::string& subject,
                         const std::string& san) {
    const std::string ca = tmp_.File("foreign-ca.pem"), ca_key = tmp_.File("foreign-ca.key");
    if (!std::ifstream(ca).good()) {
      auto r = RunCommand(StrCat("openssl req -x509 -newkey rsa:2048 -nodes -keyout ", ca_key,
                                 " -out ", ca, " -subj '/CN=Other Org CA' -days 30 2>&1"));
      EXPECT_EQ(r.exit_code, 0) << r.output;
    }
    const std::string key = tmp_.File(name + ".key"), csr = tmp_.File(name + ".csr"),
                      cert = tmp_.File(name + ".pem"), ext = tmp_.File(name + ".ext"),
                      pfx = tmp_.File(name + ".pfx");
    WriteFile(ext, StrCat("keyUsage = critical,keyEncipherment\nsubjectAltName = ", san, "\n"));
    auto r = RunCommand(StrCat(
        "openssl req -new -newkey rsa:2048 -nodes -keyout ", key, " -out ", csr, " -subj '",
        subject, "' 2>&1 && openssl x509 -req -in ", csr, " -CA ", ca, " -CAkey ", ca_key,
        " -CAcreateserial -days 30 -extfile ", ext, " -out ", cert, " 2>&1 && openssl pkcs12 ",
        "-export -inkey ", key, " -in ", cert, " -passout pass:pw -out ", pfx, " 2>&1"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return pfx;
  }

  // A PKCS#10 made by the openssl CLI for `subject` asking for `san`.
  std::string RequestWithSan(const std::string& name, const std::string& subject,
                             const std::string& san) {
    const std::string csr = tmp_.File(name + ".csr");
    auto r = RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -keyout ",
                               tmp_.File(name + ".key"), " -out ", csr, " -subj '", subject,
                               "' -addext 'subjectAltName=", san, "' 2>&1"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return csr;
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

// The directory builds the SAN (UPN otherName + rfc822Name); the template
// OID with its versions goes in the v2 template extension; getkey finds
// the key by the UPN and by 'DOMAIN\user', and by nothing near them.
TEST_F(NamesTest, DirectorySanTemplateV2AndExactRecoveryByUpnAndLogonName) {
  const std::string cert = tmp_.File("a1.pem");
  auto enrol = Kw("enrollee", StrCat("request --template MailArchival --cert-out ", cert,
                                     " --key-out ", tmp_.File("a1.key")));
  ASSERT_EQ(enrol.exit_code, 0) << enrol.output;

  const std::string text = OpensslText(cert);
  EXPECT_TRUE(Contains(text, "X509v3 Subject Alternative Name")) << text;
  EXPECT_TRUE(Contains(text, "othername: UPN::alice@corp.example, email:alice@example.com"))
      << text;
  EXPECT_TRUE(Contains(text, "1.3.6.1.4.1.311.21.7:")) << text;
  EXPECT_FALSE(Contains(text, "1.3.6.1.4.1.311.20.2:")) << text;
  EXPECT_FALSE(Contains(text, "S/MIME Capabilities")) << text;

  json c = ReadCert(cert, "1.3.6.1.4.1.311.21.8.7.7 101 3");
  EXPECT_EQ(c["upn"], json::array({"alice@corp.example"}));
  EXPECT_EQ(c["email"], json::array({"alice@example.com"}));
  EXPECT_EQ(c["dns"], json::array());
  EXPECT_EQ(c["other"], json::array());
  EXPECT_EQ(c["critical"]["2.5.29.17"], false);
  ASSERT_TRUE(c["ext"].contains("1.3.6.1.4.1.311.21.7")) << c.dump();
  EXPECT_EQ(c["ext"]["1.3.6.1.4.1.311.21.7"], c["expected_v2"]) << c.dump();
  EXPECT_EQ(c["template_v2"],
            json({{"oid", "1.3.6.1.4.1.311.21.8.7.7"}, {"major", 101}, {"minor", 3}}));
  // The bytes themselves, as openssl reads them: SEQUENCE { OID, 101, 3 }.
  auto parsed = RunCommand(StrCat("openssl x509 -in ", cert,
                                  " -outform DER | openssl asn1parse "
                                  "-inform DER -strparse $(openssl x509 -in ",
                                  cert,
                                  " -outform DER | openssl asn1parse -inform DER | grep -A1 "
                                  "':1.3.6.1.4.1.311.21.7' | tail -1 | cut -d: -f1)"));
  EXPECT_TRUE(Contains(parsed.output, ":1.3.6.1.4.1.311.21.8.7.7")) << parsed.output;
  EXPECT_TRUE(Contains(parsed.output, "INTEGER           :65")) << parsed.output;  // 101
  EXPECT_TRUE(Contains(parsed.output, "INTEGER           :03")) << parsed.output;
  const std::string serial = c["serial"];

  // Recorded: `officer find` by the exact UPN and e-mail, nothing by near misses.
  for (const char* args :
       {"officer find --upn alice@corp.example", "officer find --email alice@example.com"}) {
    auto found = Kw("officer", args);
    ASSERT_EQ(found.exit_code, 0) << args << ": " << found.output;
    EXPECT_TRUE(Contains(found.output, serial)) << args << ": " << found.output;
  }
  for (const char* args : {"officer find --upn Alice@corp.example", "officer find --upn alice",
                           "officer find --email alice@example"}) {
    auto found = Kw("officer", args);
    EXPECT_TRUE(Contains(found.output, "no certificates match")) << args << ": " << found.output;
  }

  // getkey user@domain and getkey DOMAIN\user: that account's key.
  for (const char* search : {"alice@corp.example", "'CORP\\alice'", "alice@example.com"}) {
    auto got = Kw("officer", StrCat("getkey ", search));
    ASSERT_EQ(got.exit_code, 0) << search << ": " << got.output;
    EXPECT_TRUE(Contains(got.output, serial)) << search << ": " << got.output;
    EXPECT_TRUE(Contains(got.output, "alice@corp.example")) << search << ": " << got.output;
  }
  // A near miss finds nothing and says what it tried.
  for (const char* search : {"Alice@corp.example", "alice@corp", "'corp\\alice'", "'CORP\\alic'",
                             "'CORP\\ALICE'", "'NOSUCHDOMAIN\\alice'", "alic"}) {
    auto missed = Kw("officer", StrCat("getkey ", search));
    EXPECT_EQ(missed.exit_code, 4) << search << ": " << missed.output;
    EXPECT_TRUE(Contains(missed.output, "No archived key matches"))
        << search << ": " << missed.output;
    EXPECT_FALSE(Contains(missed.output, serial)) << search << ": " << missed.output;
  }
  auto explained = Kw("officer", "getkey 'corp\\alice'");
  EXPECT_TRUE(Contains(explained.output, "no account corp\\alice in the directory"))
      << explained.output;
  explained = Kw("officer", "--json getkey Alice@corp.example");
  json j = json::parse(explained.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << explained.output;
  EXPECT_EQ(j["candidates"], json::array());
  EXPECT_TRUE(Contains(j["searched"].dump(), "no account with UPN or e-mail Alice@corp.example"))
      << j.dump();
  EXPECT_TRUE(Contains(j["searched"].dump(), "no certificate with UPN Alice@corp.example"))
      << j.dump();

  // A second key for the same account: ambiguous; --json gives the
  // candidates as objects, dates as ISO 8601 UTC.
  const std::string cert2 = tmp_.File("a2.pem");
  enrol = Kw("enrollee", StrCat("request --template MailArchival --cert-out ", cert2, " --key-out ",
                                tmp_.File("a2.key")));
  ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
  json c2 = ReadCert(cert2);
  const std::string blob = tmp_.File("x.rec");
  auto ambiguous = Kw("officer", StrCat("--json getkey alice@corp.example ", blob));
  EXPECT_NE(ambiguous.exit_code, 0) << ambiguous.output;
  EXPECT_FALSE(std::ifstream(blob).good());
  j = json::parse(ambiguous.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ambiguous.output;
  EXPECT_EQ(j["hresult"], "0x8002802c") << j.dump();
  EXPECT_EQ(j["symbol"], "TYPE_E_AMBIGUOUSNAME") << j.dump();
  ASSERT_EQ(j["candidates"].size(), 2u) << j.dump();
  std::map<std::string, json> by_serial;
  for (const json& k : j["candidates"]) by_serial[k["serial"].get<std::string>()] = k;
  for (const json& want : {c, c2}) {
    ASSERT_TRUE(by_serial.count(want["serial"].get<std::string>())) << j.dump();
    const json& k = by_serial[want["serial"].get<std::string>()];
    EXPECT_EQ(k["subject"], "CN=alice,O=keywarden test");
    EXPECT_EQ(k["upn"], "alice@corp.example");
    EXPECT_EQ(k["email"], "alice@example.com");
    EXPECT_EQ(k["template"], "MailArchival");
    EXPECT_GT(k["request_id"].get<int64_t>(), 0);
    EXPECT_EQ(k["not_before"], want["not_before"]) << k.dump();
    EXPECT_EQ(k["not_after"], want["not_after"]) << k.dump();
    EXPECT_TRUE(std::regex_match(k["not_before"].get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
        << k.dump();
  }
  // Without --json the error still lists them as text.
  ambiguous = Kw("officer", StrCat("getkey alice@corp.example ", blob));
  EXPECT_TRUE(Contains(ambiguous.output, "0x8002802c")) << ambiguous.output;
  EXPECT_TRUE(Contains(ambiguous.output, "Serial Number:")) << ambiguous.output;
}

// The reproduction of the issue: an imported (foreign) certificate whose
// SAN carries a UPN is found by it; 'NOSUCHDOMAIN\fra' no longer hands out
// Frank Foreign's key, and neither does any other near miss.
TEST_F(NamesTest, ImportedUpnIsRecordedAndNoSuchDomainFindsNothing) {
  const std::string pfx = ForeignPfx(
      "frank", "/O=Other Org/CN=Frank Foreign",
      "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:frank@corp.example,email:frank@example.com");
  auto import = Kw("admin", StrCat("importpfx -f -p pw ", pfx));
  ASSERT_EQ(import.exit_code, 0) << import.output;
  const std::string frank_serial = ReadCert(tmp_.File("frank.pem"))["serial"];
  // A foreign certificate whose UPN is in no [[account]]: found by the UPN itself.
  const std::string gina_pfx = ForeignPfx(
      "gina", "/O=Other Org/CN=Gina", "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:gina@corp.example");
  import = Kw("admin", StrCat("importpfx -f -p pw ", gina_pfx));
  ASSERT_EQ(import.exit_code, 0) << import.output;
  const std::string gina_serial = ReadCert(tmp_.File("gina.pem"))["serial"];

  auto found = Kw("officer", "--json officer find --upn frank@corp.example");
  ASSERT_EQ(found.exit_code, 0) << found.output;
  EXPECT_TRUE(Contains(found.output, frank_serial)) << found.output;
  EXPECT_TRUE(Contains(found.output, "\"email\": \"frank@example.com\"")) << found.output;

  // Exactly the account's key, by each of its names.
  for (const char* search :
       {"frank@corp.example", "'CORP\\fra'", "frank@example.com", "'Frank Foreign'"}) {
    auto got = Kw("officer", StrCat("getkey ", search));
    ASSERT_EQ(got.exit_code, 0) << search << ": " << got.output;
    EXPECT_TRUE(Contains(got.output, frank_serial)) << search << ": " << got.output;
    EXPECT_FALSE(Contains(got.output, gina_serial)) << search << ": " << got.output;
  }
  auto gina = Kw("officer", "getkey gina@corp.example");
  ASSERT_EQ(gina.exit_code, 0) << gina.output;
  EXPECT_TRUE(Contains(gina.output, gina_serial)) << gina.output;

  // The reproduction: no blob, and the answer says what was tried.
  const std::string blob = tmp_.File("frank.rec");
  auto refused = Kw("officer", StrCat("getkey 'NOSUCHDOMAIN\\fra' ", blob));
  EXPECT_EQ(refused.exit_code, 4) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "0x80092004")) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "no account NOSUCHDOMAIN\\fra in the directory"))
      << refused.output;
  EXPECT_FALSE(std::ifstream(blob).good()) << "a blob was written for a near miss";
  for (const char* search :
       {"'NOSUCHDOMAIN\\fra'", "'corp\\fra'", "'CORP\\fr'", "'CORP\\FRA'", "fra", "'\\fra'",
        "frank@corp", "FRANK@corp.example", "'frank foreign'", "Frank"}) {
    auto missed = Kw("officer", StrCat("getkey ", search));
    EXPECT_EQ(missed.exit_code, 4) << search << ": " << missed.output;
    EXPECT_FALSE(Contains(missed.output, frank_serial)) << search << ": " << missed.output;
  }
  // The retrieval by the right name works and is audited once.
  auto got = Kw("officer", StrCat("getkey 'CORP\\fra' ", blob));
  ASSERT_EQ(got.exit_code, 0) << got.output;
  EXPECT_TRUE(std::ifstream(blob).good());
}

// san = "request": the requested names are certified only when they are
// the requester's own or belong to no account; another account's UPN or
// e-mail (in any case) and a principal's are refused, and so are names of
// types the template does not list. The v1 template name extension.
TEST_F(NamesTest, RequestedSanNamesAreCheckedAgainstTheDirectory) {
  struct Refusal {
    const char* san;
    const char* says;
  };
  for (const Refusal& r : {
           Refusal{"otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@corp.example",
                   "the UPN of the account of \"CN=alice,O=keywarden test\""},
           Refusal{"email:ALICE@example.com", "e-mail name of the account of \"CN=alice"},
           Refusal{"email:frank@corp.example", "UPN of the account of \"CN=Frank Foreign"},
           Refusal{"otherName:1.3.6.1.4.1.311.20.2.3;UTF8:officer@corp.example",
                   "CN=officer,O=keywarden test"},
           Refusal{"URI:https://bob.example/", "accepts only: upn, email, dns"},
       }) {
    const std::string csr = RequestWithSan("bob-bad", "/CN=bob/O=keywarden test", r.san);
    auto submitted = Kw("enrollee2", StrCat("submit ", csr, " --template MailRequest --out ",
                                            tmp_.File("bob-bad.pem")));
    EXPECT_NE(submitted.exit_code, 0) << r.san << ": " << submitted.output;
    EXPECT_TRUE(Contains(submitted.output, r.says)) << r.san << ": " << submitted.output;
    EXPECT_FALSE(std::ifstream(tmp_.File("bob-bad.pem")).good()) << r.san;
  }
  auto denied = Kw("enrollee2", StrCat("submit ",
                                       RequestWithSan("bob-upn", "/CN=bob/O=keywarden test",
                                                      "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:"
                                                      "alice@corp.example"),
                                       " --template MailRequest"));
  EXPECT_TRUE(Contains(denied.output, "0x80070005")) << denied.output;

  // Names of no account, and the requester's own: certified as asked.
  const std::string bob_cert = tmp_.File("bob.pem");
  auto issued = Kw("enrollee2", StrCat("submit ",
                                       RequestWithSan("bob", "/CN=bob/O=keywarden test",
                                                      "email:bob@personal.example,DNS:bob.example"),
                                       " --template MailRequest --out ", bob_cert));
  ASSERT_EQ(issued.exit_code, 0) << issued.output;
  json b = ReadCert(bob_cert, "MailRequest");
  EXPECT_EQ(b["email"], json::array({"bob@personal.example"}));
  EXPECT_EQ(b["dns"], json::array({"bob.example"}));
  EXPECT_EQ(b["upn"], json::array());
  ASSERT_TRUE(b["ext"].contains("1.3.6.1.4.1.311.20.2")) << b.dump();
  EXPECT_EQ(b["ext"]["1.3.6.1.4.1.311.20.2"], b["expected_v1"]) << b.dump();
  EXPECT_FALSE(b["ext"].contains("1.3.6.1.4.1.311.21.7")) << b.dump();
  const std::string text = OpensslText(bob_cert);
  EXPECT_TRUE(Contains(text, "email:bob@personal.example, DNS:bob.example")) << text;
  EXPECT_TRUE(Contains(text, "1.3.6.1.4.1.311.20.2:")) << text;

  const std::string alice_cert = tmp_.File("alice.pem");
  issued = Kw("enrollee", StrCat("submit ",
                                 RequestWithSan("alice", "/CN=alice/O=keywarden test",
                                                "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@"
                                                "corp.example,email:alice@example.com"),
                                 " --template MailRequest --out ", alice_cert));
  ASSERT_EQ(issued.exit_code, 0) << issued.output;
  json a = ReadCert(alice_cert);
  EXPECT_EQ(a["upn"], json::array({"alice@corp.example"}));
  EXPECT_EQ(a["email"], json::array({"alice@example.com"}));

  // A request without names on a san = "request" template: no SAN at all.
  const std::string plain_csr = tmp_.File("plain.csr");
  auto made =
      RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -keyout ", tmp_.File("plain.key"),
                        " -out ", plain_csr, " -subj '/CN=bob/O=keywarden test' 2>&1"));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  issued = Kw("enrollee2", StrCat("submit ", plain_csr, " --template MailRequest --out ",
                                  tmp_.File("plain.pem")));
  ASSERT_EQ(issued.exit_code, 0) << issued.output;
  EXPECT_EQ(ReadCert(tmp_.File("plain.pem"))["no_san"], true);

  // With san = "directory" and an account without the name: denied.
  auto no_account =
      Kw("enrollee2", StrCat("request --template MailArchival --key-out ", tmp_.File("bob2.key")));
  EXPECT_NE(no_account.exit_code, 0) << no_account.output;
  EXPECT_TRUE(Contains(no_account.output, "0x8009480d")) << no_account.output;
  EXPECT_TRUE(Contains(no_account.output, "has no [[account]]")) << no_account.output;
}

// The real Windows user enrolment requests carry S/MIME capabilities: a
// template with smime_capabilities copies them byte for byte (found in the
// vector file itself, not through keywarden's parser).
TEST_F(NamesTest, WindowsVectorSmimeCapabilitiesAreCopied) {
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string vectors = KEYWARDEN_VECTORS;
  const auto pk8 = ReadRequiredFile(vectors + "/ca-exchange-key.pk8.der");
  const unsigned char* p = pk8.data();
  ossl::UniquePtr<EVP_PKEY> xkey(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pk8.size())));
  ASSERT_TRUE(xkey);
  {
    // The vector exchange key onto the CA token, certified by the CA key
    // with the serial the requests name (as archival_test.cc does).
    auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
    ASSERT_TRUE(uri.ok());
    hsm::OpenOptions open;
    open.default_module = SoftHsmFixture::module_path();
    open.pin = hsm::PinSource::File(daemon_->tokens().PinFile(SoftHsmFixture::kCaToken));
    auto token = hsm::OpenToken(*uri, open);
    ASSERT_TRUE(token.ok()) << token.status();
    hsm::KeyUsage usage;
    usage.sign = false;
    usage.decrypt = true;
    ASSERT_TRUE(hsm::ImportRsaPrivateKey(*token, xkey.get(), "vector-xchg", usage).ok());
    auto ca_key = hsm::FindPrivateKey(*token, "ca-signing");
    ASSERT_TRUE(ca_key.ok()) << ca_key.status();
    auto crypto = hsm::CryptoContext::Create();
    ASSERT_TRUE(crypto.ok());
    auto ca_pkey = (*crypto)->Load(*ca_key);
    ASSERT_TRUE(ca_pkey.ok());
    auto ca_certs = pki::ReadPemCertificates(daemon_->ca_cert_path());
    ASSERT_TRUE(ca_certs.ok());
    X509* ca = ca_certs->front().get();
    ossl::UniquePtr<X509> x(X509_new());
    X509_set_version(x.get(), X509_VERSION_3);
    BIGNUM* raw = nullptr;
    BN_hex2bn(&raw, "57de0e626d8b863629bafc07367785a1e2319737");
    ossl::UniquePtr<BIGNUM> bn(raw);
    BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x.get()));
    auto subject = pki::ParseName("CN=Issuer2-Xchg");
    X509_set_subject_name(x.get(), subject->get());
    X509_set_issuer_name(x.get(), X509_get_subject_name(ca));
    X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600L * 24 * 7);
    X509_set_pubkey(x.get(), xkey.get());
    pki::AddExtension(x.get(), ca, NID_key_usage, "critical,keyEncipherment");
    pki::AddExtension(x.get(), ca, NID_ext_key_usage, "1.3.6.1.4.1.311.21.5");
    ASSERT_TRUE(
        pki::SignCertificate((*crypto)->libctx(), x.get(), ca_pkey->get(), pki::SignatureOptions{})
            .ok());
    auto store = service::OpenSqliteStore(daemon_->db_path());
    ASSERT_TRUE(store.ok());
    auto copy = pki::SoftwareCopy(x.get());
    const auto record = service::CertificateRecordFor(copy.get(), 0, "CAExchange");
    ASSERT_TRUE((*store)->InsertCertificate(record).ok());
    auto serials = (*store)->GetSetting("exchange.serials");
    ASSERT_TRUE(serials.ok());
    ASSERT_TRUE((*store)->PutSetting("exchange.serials", *serials + "," + record.serial).ok());
  }
  ASSERT_TRUE(daemon_->Restart().ok());

  for (const char* name : {"user-enroll-1.der", "user-enroll-2.der"}) {
    const std::string file = vectors + "/" + name;
    const std::string cert = tmp_.File(std::string(name) + ".pem");
    auto submitted =
        Kw("enrollee", StrCat("submit ", file, " --template SmimeArchival --out ", cert));
    ASSERT_EQ(submitted.exit_code, 0) << name << ": " << submitted.output;
    json c = ReadCert(cert);
    ASSERT_TRUE(c["ext"].contains("1.2.840.113549.1.9.15")) << name << ": " << c.dump();
    const std::string caps = c["ext"]["1.2.840.113549.1.9.15"];
    // An S/MIME capabilities SEQUENCE, byte for byte as in the request file.
    EXPECT_EQ(caps.substr(0, 2), "30") << caps;
    auto hex = RunCommand(StrCat("xxd -p ", file, " | tr -d '\\n'"));
    ASSERT_EQ(hex.exit_code, 0) << hex.output;
    EXPECT_TRUE(Contains(hex.output, caps)) << name << ": " << caps;
    EXPECT_GT(caps.size(), 20u);
    // The directory's e-mail (san_names = ["email"]), no UPN.
    EXPECT_EQ(c["email"], json::array({"alice@example.com"}));
    EXPECT_EQ(c["upn"], json::array());
    const std::string text = OpensslText(cert);
    EXPECT_TRUE(Contains(text, "S/MIME Capabilities")) << text;
    EXPECT_TRUE(Contains(text, "1.3.6.1.4.1.311.20.2:")) << text;  // no OID: the v1 name
  }
  // A template without smime_capabilities drops them.
  const std::string cert = tmp_.File("no-caps.pem");
  auto submitted =
      Kw("enrollee",
         StrCat("submit ", vectors, "/user-enroll-3.der --template MailArchival --out ", cert));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  EXPECT_FALSE(ReadCert(cert)["ext"].contains("1.2.840.113549.1.9.15"));
}

}  // namespace
}  // namespace keywarden::testing
