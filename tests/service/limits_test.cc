// Bounded input, bounded audit, on a real keywardend: every string and bytes
// field of every request has a length limit, refused with INVALID_ARGUMENT
// naming the field and never echoing it; nothing oversized reaches the
// database; rejections are audited at most once a minute per principal and
// event; a password with a NUL is refused; getkey 0 and empty searches are
// not "everything"; a request gRPC cannot parse gets a code and a message.
#include <openssl/pkcs12.h>
#include <sys/stat.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "service/bounded.h"
#include "service/server/limits.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

using google::protobuf::FieldDescriptor;

const std::vector<std::string>& ServiceNames() {
  static const std::vector<std::string> names = {
      "keywarden.v1.Enrollment", "keywarden.v1.Officer", "keywarden.v1.Administration",
      "keywarden.v1.Audit",      "keywarden.v1.Backup",  "keywarden.v1.Signing"};
  return names;
}

// A principal that holds the role each service needs.
std::string PrincipalFor(const std::string& service) {
  if (service == "keywarden.v1.Enrollment") return "enrollee";
  if (service == "keywarden.v1.Officer") return "officer";
  if (service == "keywarden.v1.Administration") return "admin";
  if (service == "keywarden.v1.Signing") return "signer";
  return "auditor";
}

// The table is complete: every string and bytes field of every request
// message of every service has its own limit.
TEST(LimitsTableTest, EveryStringAndBytesFieldOfEveryRequestHasALimit) {
  std::set<std::string> limited;
  for (const auto& l : service::RequestFieldLimits()) {
    EXPECT_TRUE(limited.insert(l.field).second) << "listed twice: " << l.field;
  }
  std::set<std::string> seen;
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const auto& name : ServiceNames()) {
    const auto* s = pool->FindServiceByName(name);
    ASSERT_NE(s, nullptr) << name;
    for (int m = 0; m < s->method_count(); ++m) {
      const auto* in = s->method(m)->input_type();
      for (int f = 0; f < in->field_count(); ++f) {
        const FieldDescriptor* field = in->field(f);
        ASSERT_NE(field->cpp_type(), FieldDescriptor::CPPTYPE_MESSAGE)
            << field->full_name() << ": nested request messages need their own test";
        if (field->type() != FieldDescriptor::TYPE_STRING &&
            field->type() != FieldDescriptor::TYPE_BYTES) {
          continue;
        }
        seen.insert(field->full_name());
        EXPECT_EQ(limited.count(field->full_name()), 1u) << "no limit for " << field->full_name();
      }
    }
  }
  for (const auto& l : limited) EXPECT_EQ(seen.count(l), 1u) << "not a request field: " << l;
  EXPECT_EQ(seen.size(), 28u);
}

TEST(BoundedTest, EchoCutsAtACharacterAndEscapesWhatIsNotUtf8) {
  EXPECT_EQ(service::Echo("short"), "short");
  EXPECT_EQ(service::Echo(std::string(200, 'a'), 10), "aaaaaaaaaa...(200 bytes)");
  // "é" is two bytes: never cut in half.
  EXPECT_EQ(service::Echo("aaaaaaaaa\xc3\xa9", 10), "aaaaaaaaa...(11 bytes)");
  EXPECT_EQ(service::Echo("a\xff\xc3\x28\n\xed\xa0\x80"), "a\\xff\\xc3(\\x0a\\xed\\xa0\\x80");
  // The result is always valid JSON text.
  EXPECT_NO_THROW(nlohmann::json(service::Echo(std::string("\xff\xfe", 2))).dump());
}

TEST(BoundedTest, AuditDetailsAreCappedAndStayJson) {
  const std::string small = nlohmann::json{{"a", "b"}}.dump();
  EXPECT_EQ(service::BoundAuditDetails(small), small);
  const std::string big = nlohmann::json{{"subject", std::string(100000, 'S')}}.dump();
  const std::string bounded = service::BoundAuditDetails(big);
  EXPECT_LE(bounded.size(), service::kMaxAuditDetailsBytes);
  const auto j = nlohmann::json::parse(bounded);
  EXPECT_EQ(j["truncated"], true);
  EXPECT_EQ(j["bytes"], big.size());
}

TEST(BoundedTest, RefusalLimiterRecordsOncePerPeriodWithTheCount) {
  service::RefusalLimiter limiter(std::chrono::milliseconds(300));
  EXPECT_EQ(limiter.Take("a"), 1);
  EXPECT_EQ(limiter.Take("a"), 0);
  EXPECT_EQ(limiter.Take("a"), 0);
  EXPECT_EQ(limiter.Take("b"), 1);  // another key: its own record
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  EXPECT_EQ(limiter.Take("a"), 3);  // the two held back and this one
  EXPECT_EQ(limiter.Take("a"), 0);
}

class LimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonHarness::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::vector<v1::AuditRecord> Audit() {
    auto stub = v1::Audit::NewStub(daemon_->Channel("auditor"));
    std::vector<v1::AuditRecord> all;
    for (int64_t from = 1;;) {
      grpc::ClientContext ctx;
      v1::ReadAuditRequest in;
      in.set_from_seq(from);
      in.set_limit(10000);
      v1::ReadAuditResponse out;
      EXPECT_TRUE(stub->ReadAudit(&ctx, in, &out).ok());
      if (out.records().empty()) break;
      for (const auto& r : out.records()) all.push_back(r);
      from = out.records().rbegin()->seq() + 1;
    }
    return all;
  }
  std::vector<v1::AuditRecord> Events(const std::string& event) {
    std::vector<v1::AuditRecord> out;
    for (auto& r : Audit()) {
      if (r.event() == event) out.push_back(r);
    }
    return out;
  }
  // The database and its write-ahead log, in bytes.
  int64_t DbBytes() const {
    int64_t total = 0;
    for (const std::string suffix : {"", "-wal"}) {
      struct stat st {};
      if (stat((daemon_->db_path() + suffix).c_str(), &st) == 0) total += st.st_size;
    }
    return total;
  }

  std::unique_ptr<DaemonHarness> daemon_;
};

// Each field, one byte over its limit, through the RPC that takes it and as
// a principal allowed to call it: INVALID_ARGUMENT (E_INVALIDARG) naming the
// field and the limit, never the value; nothing audited or stored.
TEST_F(LimitsTest, EveryFieldOverItsLimitIsRefusedNamingTheFieldNotTheValue) {
  const size_t records_before = Audit().size();
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  auto* factory = google::protobuf::MessageFactory::generated_factory();
  int checked = 0;
  for (const auto& limit : service::RequestFieldLimits()) {
    SCOPED_TRACE(limit.field);
    const FieldDescriptor* field = pool->FindFieldByName(limit.field);
    ASSERT_NE(field, nullptr);
    // The RPC whose request this is.
    std::string method, service_name;
    for (const auto& name : ServiceNames()) {
      const auto* s = pool->FindServiceByName(name);
      for (int m = 0; m < s->method_count(); ++m) {
        if (s->method(m)->input_type() == field->containing_type()) {
          method = StrCat("/", name, "/", s->method(m)->name());
          service_name = name;
        }
      }
    }
    ASSERT_FALSE(method.empty());
    std::unique_ptr<google::protobuf::Message> msg(
        factory->GetPrototype(field->containing_type())->New());
    // A repeated field (SignDigestsRequest.digests): one value, named with its index.
    const bool repeated = field->is_repeated();
    if (repeated) {
      msg->GetReflection()->AddString(msg.get(), field, std::string(limit.max_bytes + 1, 'Z'));
    } else {
      msg->GetReflection()->SetString(msg.get(), field, std::string(limit.max_bytes + 1, 'Z'));
    }
    const grpc::Status st =
        CallRaw(daemon_->Channel(PrincipalFor(service_name)), method, msg->SerializeAsString());
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method << st.error_message();
    const std::string expected =
        StrCat(field->containing_type()->name(), ".", field->name(), repeated ? "[0]" : "", " is ",
               limit.max_bytes + 1, " bytes; the limit is ", limit.max_bytes, " bytes");
    EXPECT_NE(st.error_message().find(expected), std::string::npos) << st.error_message();
    EXPECT_EQ(st.error_message().find("ZZZZ"), std::string::npos);
    EXPECT_LT(st.error_message().size(), 200u);
    EXPECT_EQ(DetailOf(st).hresult(), 0x80070057u);
    // At the limit the same field passes the check (whatever the RPC then says).
    if (repeated) {
      msg->GetReflection()->SetRepeatedString(msg.get(), field, 0,
                                              std::string(limit.max_bytes, 'Z'));
    } else {
      msg->GetReflection()->SetString(msg.get(), field, std::string(limit.max_bytes, 'Z'));
    }
    const grpc::Status at =
        CallRaw(daemon_->Channel(PrincipalFor(service_name)), method, msg->SerializeAsString());
    EXPECT_EQ(at.error_message().find("the limit is"), std::string::npos) << at.error_message();
    EXPECT_EQ(at.error_message().find(std::string(200, 'Z')), std::string::npos);
    ++checked;
  }
  EXPECT_EQ(checked, 28u);
  // The over-limit calls left no record; the at-limit ones at most a bounded one each.
  const auto after = Audit();
  for (size_t i = records_before; i < after.size(); ++i) {
    EXPECT_LE(after[i].details().size(), 4096u) << after[i].event();
  }
}

TEST_F(LimitsTest, HugeTemplateNameAndAliasAreRefusedAndTheDatabaseDoesNotGrow) {
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string csr = MakeRequestDer("limits", 2048, &key);
  // Warm up: one ordinary rejection, so the database has its pages.
  const size_t records_before = Audit().size();
  const int64_t bytes_before = DbBytes();

  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  {  // 15 MiB: over the largest legitimate message; gRPC refuses it, with a message.
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name(std::string(15 << 20, 'T'));
    v1::EnrollmentResult out;
    const grpc::Status st = enroll->Submit(&ctx, in, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_FALSE(st.error_message().empty());
    EXPECT_LT(st.error_message().size(), 300u) << st.error_message().substr(0, 300);
    std::cout << "15 MiB template name: " << st.error_code() << " " << st.error_message() << "\n";
  }
  {  // 100 KB: under the message limit, over the field's.
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name(std::string(100 * 1000, 'T'));
    v1::EnrollmentResult out;
    const grpc::Status st = enroll->Submit(&ctx, in, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(st.error_message(),
              "The parameter is incorrect. 0x80070057: SubmitRequest.template_name is 100000 "
              "bytes; the limit is 256 bytes");
  }
  {  // A 100 KB signing alias.
    auto signing = v1::Signing::NewStub(daemon_->Channel("signer"));
    grpc::ClientContext ctx;
    v1::SignDigestRequest in;
    in.set_alias(std::string(100 * 1000, 'A'));
    in.set_algorithm(v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256);
    in.set_digest(std::string(32, '\x01'));
    v1::SignResponse out;
    const grpc::Status st = signing->SignDigest(&ctx, in, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("SignDigestRequest.alias is 100000 bytes; the limit is 256"),
              std::string::npos)
        << st.error_message();
  }
  const size_t records_after = Audit().size();
  const int64_t bytes_after = DbBytes();
  std::cout << "database: " << bytes_before << " -> " << bytes_after << " bytes; audit records "
            << records_before << " -> " << records_after << "\n";
  EXPECT_EQ(records_after, records_before);
  EXPECT_LE(bytes_after - bytes_before, 64 * 1024);

  // A template name within the limit that the CA does not offer: the error
  // and the denial echo it cut to a bounded length.
  grpc::ClientContext ctx;
  v1::SubmitRequest in;
  in.set_request(csr);
  in.set_template_name(std::string(250, 'x'));
  v1::EnrollmentResult out;
  const grpc::Status st = enroll->Submit(&ctx, in, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DetailOf(st).hresult(), 0x80094800u);
  EXPECT_NE(st.error_message().find("...(250 bytes)"), std::string::npos) << st.error_message();
  EXPECT_EQ(st.error_message().find(std::string(129, 'x')), std::string::npos);
  for (const auto& r : Audit()) EXPECT_LE(r.details().size(), 4096u) << r.event();
}

// 300 submissions that look like PKCS#10 (a real request with one
// signature byte flipped) and fail to parse: one request.rejected record.
TEST_F(LimitsTest, RepeatedMalformedSubmissionsMakeOneAuditRecord) {
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string csr = MakeRequestDer("flip", 2048, &key);
  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  const size_t before = Audit().size();
  const int64_t bytes_before = DbBytes();
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = csr;
    bad[bad.size() - 1 - static_cast<size_t>(i % 200)] ^= static_cast<char>(1 + i / 200);
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(bad);
    v1::EnrollmentResult out;
    const grpc::Status st = enroll->Submit(&ctx, in, &out);
    if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) ++refused;
  }
  EXPECT_EQ(refused, 300);
  const auto after = Audit();
  std::cout << "300 malformed submissions: audit records " << before << " -> " << after.size()
            << ", database " << bytes_before << " -> " << DbBytes() << " bytes\n";
  EXPECT_EQ(after.size(), before + 1);
  const auto rejected = Events("request.rejected");
  ASSERT_EQ(rejected.size(), 1u);
  const auto details = nlohmann::json::parse(rejected[0].details());
  EXPECT_EQ(details["rejected_requests"], 1);
  EXPECT_EQ(details["format"], "pkcs10");
  EXPECT_EQ(rejected[0].principal(), daemon_->client("enrollee").principal);

  // Authorization refusals and signing refusals aggregate the same way.
  auto nobody = v1::Enrollment::NewStub(daemon_->Channel("nobody"));
  auto signing = v1::Signing::NewStub(daemon_->Channel("signer"));
  for (int i = 0; i < 50; ++i) {
    grpc::ClientContext c1;
    v1::SubmitRequest in;
    in.set_request(csr);
    v1::EnrollmentResult out;
    EXPECT_EQ(nobody->Submit(&c1, in, &out).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    grpc::ClientContext c2;
    v1::SignDigestRequest sd;
    sd.set_alias(StrCat("no-such-alias-", i));
    sd.set_algorithm(v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256);
    sd.set_digest(std::string(32, '\x01'));
    v1::SignResponse so;
    EXPECT_EQ(signing->SignDigest(&c2, sd, &so).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(Events("authz.denied").size(), 1u);
  EXPECT_EQ(Events("signing.refused").size(), 1u);
}

// A PFX whose password is "real" does not open with "real\0zz": the
// password is refused, naming the field, before the PFX is looked at.
TEST_F(LimitsTest, PasswordWithANulIsRefusedNotCut) {
  auto key = SoftwareRsaKey(2048);
  auto cert = SelfSignedCa(nullptr, key.get(), "pfx owner");
  ASSERT_TRUE(cert);
  ossl::UniquePtr<PKCS12> p12(
      PKCS12_create("real", nullptr, key.get(), cert.get(), nullptr, 0, 0, 0, 0, 0));
  ASSERT_TRUE(p12);
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12.get(), &der);
  ASSERT_GT(len, 0);
  const std::string pfx(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);

  auto admin = v1::Administration::NewStub(daemon_->Channel("admin"));
  auto import = [&](const std::string& password) {
    grpc::ClientContext ctx;
    v1::ImportArchivedKeyRequest in;
    in.set_pfx(pfx);
    in.set_password(password);
    v1::ImportArchivedKeyResponse out;
    return admin->ImportArchivedKey(&ctx, in, &out);
  };
  // With the right password the PFX opens (and is refused for what it
  // holds: another CA's certificate, not an end entity's of this CA).
  const grpc::Status right = import("real");
  EXPECT_FALSE(right.ok());
  EXPECT_EQ(right.error_message().find("wrong password"), std::string::npos)
      << right.error_message();
  EXPECT_EQ(right.error_message().find("NUL"), std::string::npos) << right.error_message();
  const grpc::Status nul = import(std::string("real\0zz", 7));
  EXPECT_EQ(nul.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(nul.error_message().find("ImportArchivedKeyRequest.password holds a NUL byte"),
            std::string::npos)
      << nul.error_message();
  EXPECT_EQ(nul.error_message().find("real"), std::string::npos);
  // A wrong password is the PFX's error, not the NUL's.
  const grpc::Status wrong = import("realzz");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(wrong.error_message().find("wrong password for the PFX"), std::string::npos)
      << wrong.error_message();
}

TEST_F(LimitsTest, GetKeyZeroAndEmptySearchesAreNeverEverything) {
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  for (const std::string search : {"0", "00", "", "   "}) {
    SCOPED_TRACE("\"" + search + "\"");
    for (bool blob : {false, true}) {
      grpc::ClientContext ctx;
      v1::GetArchivedKeyRequest in;
      in.set_search(search);
      in.set_blob(blob);
      v1::GetArchivedKeyResponse out;
      const grpc::Status st = officer->GetArchivedKey(&ctx, in, &out);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
      EXPECT_EQ(DetailOf(st).hresult(), 0x80070057u);
      EXPECT_FALSE(st.error_message().empty());
      EXPECT_EQ(out.candidates_size(), 0);
    }
  }
  {
    grpc::ClientContext ctx;
    v1::GetArchivedKeyRequest in;
    in.set_search("0");
    v1::GetArchivedKeyResponse out;
    const grpc::Status st = officer->GetArchivedKey(&ctx, in, &out);
    EXPECT_NE(st.error_message().find("request ids start at 1"), std::string::npos)
        << st.error_message();
  }
  // FindCertificates: an empty query (or only a serial of separators) and a
  // negative request id are refused; a real criterion is answered.
  auto find = [&](const v1::FindCertificatesRequest& in) {
    grpc::ClientContext ctx;
    v1::FindCertificatesResponse out;
    return std::make_pair(officer->FindCertificates(&ctx, in, &out), out.certificates_size());
  };
  v1::FindCertificatesRequest empty;
  auto [st, n] = find(empty);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("names no criterion"), std::string::npos);
  EXPECT_EQ(n, 0);
  v1::FindCertificatesRequest colons;
  colons.set_serial(" : ");
  EXPECT_EQ(find(colons).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::FindCertificatesRequest negative;
  negative.set_request_id(-1);
  EXPECT_EQ(find(negative).first.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::FindCertificatesRequest some;
  some.set_subject_contains("CN=");
  EXPECT_TRUE(find(some).first.ok());
}

// Bytes that are not protobuf, and a string field that is not UTF-8:
// gRPC cannot parse them; the client gets INVALID_ARGUMENT and a message,
// for the sync services and the callback one (Signing) alike.
TEST_F(LimitsTest, MalformedProtobufGetsACodeAndAMessage) {
  const std::string garbage("\xff\xff\xff\xff\x0f", 5);
  // A length running past the end.
  const std::string truncated("\x0a\x7f\x01", 3);
  // A string field (length-delimited) = C3 28: not UTF-8.
  auto bad_utf8 = [](char tag) { return std::string{tag, '\x02', '\xc3', '\x28'}; };
  struct Call {
    std::string who, method;
    char string_tag;  // field number << 3 | 2 of one of its string fields
  };
  const std::vector<Call> calls = {
      {"enrollee", "/keywarden.v1.Enrollment/Submit", '\x12'},      // template_name = 2
      {"officer", "/keywarden.v1.Officer/GetArchivedKey", '\x0a'},  // search = 1
      {"signer", "/keywarden.v1.Signing/SignDigest", '\x0a'},       // alias = 1
      {"signer", "/keywarden.v1.Signing/GetSigningKey", '\x0a'},    // alias = 1
  };
  for (const auto& [who, method, tag] : calls) {
    for (const std::string& bytes : {garbage, bad_utf8(tag), truncated}) {
      SCOPED_TRACE(method);
      const grpc::Status st = CallRaw(daemon_->Channel(who), method, bytes);
      std::cout << method << " " << bytes.size() << ": " << st.error_code() << " ["
                << st.error_message() << "]\n";
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
      EXPECT_NE(st.error_message().find("could not be parsed"), std::string::npos)
          << "[" << st.error_message() << "]";
      EXPECT_NE(st.error_message().find(method), std::string::npos);
      EXPECT_EQ(DetailOf(st).hresult(), 0x80070057u);
    }
  }
  // An unknown method keeps UNIMPLEMENTED, with a message.
  const grpc::Status unknown =
      CallRaw(daemon_->Channel("enrollee"), "/keywarden.v1.Enrollment/NoSuchMethod", "");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_NE(unknown.error_message().find("NoSuchMethod"), std::string::npos)
      << unknown.error_message();
  // The daemon still serves.
  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::CertificateChain chain;
  EXPECT_TRUE(enroll->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &chain).ok());
}

}  // namespace
}  // namespace keywarden::testing
