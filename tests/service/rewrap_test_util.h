// Helpers shared by the KRA rollover tests (rewrap_test.cc and
// threshold_rewrap_test.cc): the database read through the daemon's own SQL
// client, and the parts of openssl's reading of an envelope they compare.
#pragma once

#include <openssl/evp.h>

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

}  // namespace keywarden::testing
