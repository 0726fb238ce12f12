// keywarden submit / retrieve: enrollment as an enrollee, like certreq
// -submit and certreq -retrieve.
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "hsm/strings.h"
#include "pki/files.h"
#include "pki/pkcs10.h"

namespace keywarden::cli {
namespace {

struct SubmitOptions {
  std::string request_file;
  std::string template_name;
  std::string out;
};

struct RetrieveOptions {
  int64_t request_id = 0;
  std::string out;
};

absl::StatusOr<Reply> RunSubmit(Client& client, const SubmitOptions& o) {
  // Refuse an existing output file before anything reaches the CA.
  if (!o.out.empty()) {
    if (auto st = pki::CheckWritable(o.out, pki::Overwrite::kRefuse); !st.ok()) return st;
  }
  auto bytes = pki::ReadFileBytes(o.request_file);
  if (!bytes.ok()) return bytes.status();
  const std::vector<uint8_t> der = pki::PemToDer(*bytes);
  if (der.empty()) return absl::InvalidArgumentError(StrCat(o.request_file, ": empty request"));

  v1::SubmitRequest in;
  in.set_request(std::string(der.begin(), der.end()));
  in.set_template_name(o.template_name);
  v1::EnrollmentResult result;
  auto ctx = client.Context();
  if (auto st = client.Check(client.enrollment().Submit(ctx.get(), in, &result)); !st.ok())
    return st;
  return EnrollmentReply(result, o.out);
}

absl::StatusOr<Reply> RunRetrieve(Client& client, const RetrieveOptions& o) {
  if (!o.out.empty()) {
    if (auto st = pki::CheckWritable(o.out, pki::Overwrite::kRefuse); !st.ok()) return st;
  }
  v1::RetrieveRequest in;
  in.set_request_id(o.request_id);
  v1::EnrollmentResult result;
  auto ctx = client.Context();
  if (auto st = client.Check(client.enrollment().Retrieve(ctx.get(), in, &result)); !st.ok())
    return st;
  return EnrollmentReply(result, o.out);
}

}  // namespace

void RegisterEnrollCommands(CLI::App& app, const Output& out, const ConnectionOptions& conn,
                            Action& action) {
  CLI::App* submit = app.add_subcommand(
      "submit", "Submit a certificate request (PKCS#10 or CMC, DER or PEM) as an enrollee");
  submit->footer(
      "Prints the request id, disposition and message. When the certificate is issued it is\n"
      "written to --out (PEM; an existing file is never overwritten) or shown, with its serial\n"
      "and SHA-1. A request taken under submission shows disposition \"pending\" and exits 0;\n"
      "fetch the certificate later with `keywarden retrieve ID`. A request the CA refuses\n"
      "exits non-zero with the CA's reason and HRESULT, e.g. 2 for an unknown template.");
  auto s = std::make_shared<SubmitOptions>();
  submit->add_option("REQUEST_FILE", s->request_file, "The request file (DER or PEM)")->required();
  submit->add_option("--template", s->template_name,
                     "Certificate template name or OID (default: the one the request names)");
  submit->add_option("--out", s->out,
                     "Where to write the issued certificate (PEM; must not exist)");
  submit->callback([&out, &conn, &action, s] {
    action = WithClient(out, conn, [s](Client& c) { return RunSubmit(c, *s); });
  });

  CLI::App* retrieve = app.add_subcommand(
      "retrieve", "Fetch the result of an earlier request (your own, or any as an officer)");
  retrieve->footer("Exit codes: 0 issued or still pending, 1 denied or failed, 4 no such request.");
  auto r = std::make_shared<RetrieveOptions>();
  retrieve->add_option("REQUEST_ID", r->request_id, "The request id `submit` printed")
      ->required()
      ->check(CLI::PositiveNumber);
  retrieve->add_option("--out", r->out,
                       "Where to write the certificate when issued (PEM; must not exist)");
  retrieve->callback([&out, &conn, &action, r] {
    action = WithClient(
        out, conn, [r](Client& c) { return RunRetrieve(c, *r); }, Failover::kIdempotent);
  });
}

}  // namespace keywarden::cli
