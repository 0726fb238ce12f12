// keywardend --check-config: everything the daemon needs to serve, checked
// without serving (docs/DECISIONS.md "An operable service: daemon CLI").
//
// Parses the configuration, opens every file it names, logs in to the CA
// token (and to every other token a [[signing.keys]] entry names), checks
// that the CA signing key matches the CA certificate, reads the TLS server
// certificate and key and the client CAs and CRLs, verifies the database
// (schema, integrity, audit chain and its signed checkpoints) and validates
// every Key Recovery Agent. Nothing is written to a token or the database:
// the database is opened only when it exists and already has this build's
// schema, no exchange certificate or CRL is made, nothing is audited. A
// missing database is reported, not created (the daemon creates it).
#pragma once

#include <cstdio>
#include <string>

namespace keywarden::service {

// Writes one line per check to `out` ("ok    what: detail" or
// "FAIL  what: why") and a last line saying whether the configuration is
// usable. Returns the process exit status: 0 when every check passed, 1
// otherwise.
int CheckConfig(const std::string& config_path, FILE* out);

}  // namespace keywarden::service
