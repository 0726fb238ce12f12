// What the restore tests of both backends share (tests/cli/restore_test.cc
// on SQLite, tests/cli/pg_restore_test.cc on PostgreSQL): a real daemon,
// the CLI as the operator runs it, and independent tools (openssl,
// sha256sum, python3) to read what it wrote.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "tests/service/daemon_harness.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {

inline std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// The store's form of a serial openssl prints: lower case, no leading zero octets.
inline std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
  while (s.size() > 2 && s[0] == '0' && s[1] == '0') s.erase(0, 2);
  return s;
}

class RestoreFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonHarness::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }

  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }

  // keywarden restore (offline: no connection options).
  CommandResult Restore(const std::string& args, const std::string& json_name = "") const {
    if (json_name.empty()) {
      return RunCommand(
          StrCat(KEYWARDEN_CLI, " restore ", args, " --config ", daemon_->config_path()));
    }
    const std::string file = tmp_.File(json_name + ".json");
    CommandResult r =
        RunCommand(StrCat("(", KEYWARDEN_CLI, " --json restore ", args, " --config ",
                          daemon_->config_path(), " > ", file, " 2> ", file, ".err)"));
    r.output = Slurp(file) + Slurp(file + ".err");
    return r;
  }

  // A value from a JSON file, computed by python3.
  std::string Py(const std::string& name, const std::string& expr) const {
    auto r =
        RunCommand(StrCat("python3 -c \"import json,sys; d=json.load(open(sys.argv[1])); print(",
                          expr, ")\" ", tmp_.File(name + ".json")));
    EXPECT_EQ(r.exit_code, 0) << expr << "\n" << r.output;
    return Trim(r.output);
  }

  std::string Slurp(const std::string& path) const {
    auto bytes = ReadFile(path);
    return std::string(bytes.begin(), bytes.end());
  }

  std::string Sha256(const std::string& path) const {
    auto r = RunCommand(StrCat("sha256sum ", path));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output.substr(0, 64);
  }

  // Issues a User certificate for `name` (written to NAME.pem); returns its
  // serial as openssl prints it (upper-case hex).
  std::string Issue(const std::string& name) {
    const std::string key = tmp_.File(name + ".key"), csr = tmp_.File(name + ".csr");
    auto req = RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -subj '/CN=", name,
                                 "/O=keywarden test' -keyout ", key, " -out ", csr));
    EXPECT_EQ(req.exit_code, 0) << req.output;
    auto r = Kw("enrollee", StrCat("submit ", csr, " --template User --out ", Pem(name)));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto serial = RunCommand(StrCat("openssl x509 -noout -serial -in ", Pem(name)));
    EXPECT_EQ(serial.exit_code, 0) << serial.output;
    const size_t eq = serial.output.find('=');
    return eq == std::string::npos ? "" : Trim(serial.output.substr(eq + 1));
  }
  std::string Pem(const std::string& name) const { return tmp_.File(name + ".pem"); }

  void Revoke(const std::string& serial) {
    auto r = Kw("officer", StrCat("officer revoke ", serial, " --reason keyCompromise"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // Publishes a new CRL, fetches it to NAME.crl and returns its number as
  // `openssl crl -noout -crlnumber` reads it.
  uint64_t PublishAndFetchCrl(const std::string& name) {
    auto p = Kw("admin", "ca publish-crl");
    EXPECT_EQ(p.exit_code, 0) << p.output;
    return FetchCrl(name);
  }
  uint64_t FetchCrl(const std::string& name) {
    const std::string file = tmp_.File(name + ".crl");
    unlink(file.c_str());
    auto got = Kw("enrollee", StrCat("ca crl --out ", file));
    EXPECT_EQ(got.exit_code, 0) << got.output;
    return OpensslCrlNumber(file);
  }
  static uint64_t OpensslCrlNumber(const std::string& file) {
    auto r = RunCommand(StrCat("openssl crl -noout -crlnumber -in ", file));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    const size_t eq = r.output.find("crlNumber=");
    EXPECT_NE(eq, std::string::npos) << r.output;
    if (eq == std::string::npos) return 0;
    std::string hex = Trim(r.output.substr(eq + 10));
    if (hex.rfind("0x", 0) == 0) hex = hex.substr(2);
    return std::stoull(hex, nullptr, 16);
  }

  // "ok" lines of the offline audit verification of a database file.
  CommandResult VerifyAuditOffline(const std::string& db) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, " audit verify --database ", db, " --ca-cert ",
                             daemon_->ca_cert_path()));
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

}  // namespace keywarden::testing
