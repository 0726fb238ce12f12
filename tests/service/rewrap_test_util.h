// Helpers shared by the KRA rollover tests (rewrap_test.cc and
// threshold_rewrap_test.cc): the database read through the daemon's own SQL
// client, and the parts of openssl's reading of an envelope they compare.
#pragma once

#include <openssl/evp.h>

#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "tests/service/daemon_harness.h"

namespace keywarden::testing {

inline std::string TrimLine(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// Raw SHA-256 (32 bytes in a string), as RewrapArchivedKeyRequest carries it.
inline std::string Sha256Raw(const std::vector<uint8_t>& data) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

// The part of `openssl cms -cmsout -print` from "encryptedContentInfo:" to
// the end: what openssl reads as the encrypted content, IV and algorithm.
inline std::string EncryptedContentText(const std::string& print) {
  const size_t at = print.find("encryptedContentInfo:");
  return at == std::string::npos ? "" : print.substr(at);
}

// One value from the CA database (the backend's own command-line client).
inline std::string SqlValue(const DaemonHarness& daemon, const std::string& sql) {
  auto r = RunCommand(daemon.SqlCommand(sql));
  EXPECT_EQ(r.exit_code, 0) << sql << "\n" << r.output;
  return TrimLine(r.output);
}

inline int AuditEventCount(const DaemonHarness& daemon, const std::string& event) {
  return std::stoi(
      SqlValue(daemon, StrCat("SELECT count(*) FROM audit WHERE event = '", event, "'")));
}

// getkey SERIAL into `dir`/`name`.rec as the officer, then `openssl cms
// -verify` against the CA certificate, the inner envelope into
// `dir`/`name`.der. Returns the blob's path.
inline std::string GetVerifiedBlob(const DaemonHarness& daemon, const TempDir& dir,
                                   const std::string& serial, const std::string& name) {
  const std::string blob = dir.File(name + ".rec");
  std::remove(blob.c_str());
  auto get = RunCommand(
      StrCat(KEYWARDEN_CLI, daemon.CliConnection("officer"), "getkey ", serial, " ", blob));
  EXPECT_EQ(get.exit_code, 0) << get.output;
  auto verify =
      RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blob,
                        " -CAfile ", daemon.ca_cert_path(), " -out ", dir.File(name + ".der")));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  return blob;
}

// `openssl cms -cmsout -print` of `dir`/`name`.der.
inline std::string CmsPrint(const TempDir& dir, const std::string& name) {
  auto p =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", dir.File(name + ".der")));
  EXPECT_EQ(p.exit_code, 0) << p.output;
  return p.output;
}

}  // namespace keywarden::testing
