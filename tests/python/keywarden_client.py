#!/usr/bin/python3
"""An independent keywarden client: Debian's python3-grpcio, stubs generated
from the .proto at run time, mutual TLS.

Fetches the CA exchange certificate, submits a PKCS#10 request for the
"User" template, and prints one JSON line:

  {"exchange_certificate_der_b64": ..., "request_id": ..., "disposition": ...,
   "certificate_der_b64": ...}

Exit status 1, with the error on stderr, on any failure.
"""

import argparse
import base64
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile


def generate_stubs(proto_dir, out_dir, protos=("keywarden.proto",)):
    """Runs `python3 -m grpc_tools.protoc` on keywarden/v1/<protos>.

    Run as a module, grpc_tools adds its own copy of the well-known types
    (google/protobuf/any.proto) to the include path.
    """
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I" + proto_dir,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
    ] + [os.path.join(proto_dir, "keywarden", "v1", p) for p in protos]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError("grpc_tools.protoc failed (exit %d): %s"
                           % (done.returncode, (done.stderr or done.stdout).strip()))
    # Make the generated tree importable as packages.
    for sub in ("keywarden", os.path.join("keywarden", "v1")):
        init = os.path.join(out_dir, sub, "__init__.py")
        if not os.path.exists(init):
            with open(init, "w", encoding="ascii"):
                pass


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run(opts):
    import grpc  # python3-grpcio

    out_dir = tempfile.mkdtemp(prefix="keywarden-stubs-")
    try:
        generate_stubs(opts.proto_dir, out_dir)
        sys.path.insert(0, out_dir)
        pb = importlib.import_module("keywarden.v1.keywarden_pb2")
        pb_grpc = importlib.import_module("keywarden.v1.keywarden_pb2_grpc")

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(opts.ca),
            private_key=read(opts.key),
            certificate_chain=read(opts.cert),
        )
        options = []
        if opts.server_name:
            options.append(("grpc.ssl_target_name_override", opts.server_name))
        # --target may name several replicas: the first that answers the
        # (harmless) exchange certificate read gets the submission, which
        # is never sent to a second one (it may have been carried out).
        failures = []
        for target in [t.strip() for t in opts.target.split(",")]:
            with grpc.secure_channel(target, credentials, options=options) as channel:
                stub = pb_grpc.EnrollmentStub(channel)
                try:
                    exchange = stub.GetExchangeCertificate(
                        pb.GetExchangeCertificateRequest(), timeout=min(opts.timeout, 10.0)
                    )
                except grpc.RpcError as error:
                    if not connection_failure(grpc, error):
                        raise
                    failures.append("%s: %s" % (target, describe(error)))
                    continue
                result = stub.Submit(
                    pb.SubmitRequest(request=read(opts.csr), template_name=opts.template),
                    timeout=opts.timeout,
                )
                break
        else:
            raise RuntimeError("no keywardend answered: " + "; ".join(failures))
        return {
            "exchange_certificate_der_b64": base64.b64encode(exchange.certificate).decode("ascii"),
            "request_id": result.request_id,
            "disposition": pb.Disposition.Name(result.disposition),
            "certificate_der_b64": base64.b64encode(result.certificate).decode("ascii"),
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def connection_failure(grpc, error):
    """UNAVAILABLE (or a deadline) that keywardend did not send: every error
    of keywardend's own carries grpc-status-details-bin."""
    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return False
    trailers = error.trailing_metadata() or ()
    return not any(key == "grpc-status-details-bin" for key, _ in trailers)


def describe(error):
    """A readable line for an exception, with the gRPC code when there is one."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):
        try:
            return "%s: %s" % (code().name, details())
        except Exception:  # pylint: disable=broad-except
            pass
    return "%s: %s" % (type(error).__name__, error)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", required=True, help="directory holding keywarden/v1/*.proto")
    parser.add_argument(
        "--target",
        required=True,
        help="HOST:PORT of keywardend; several comma-separated (replicas) are tried in order",
    )
    parser.add_argument("--cert", required=True, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, help="client private key (PEM)")
    parser.add_argument("--ca", required=True, help="trust anchor for the server (PEM)")
    parser.add_argument("--server-name", default="", help="TLS name to check (override)")
    parser.add_argument("--template", default="User", help="certificate template (default User)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("csr", help="PKCS#10 request (DER or PEM)")
    opts = parser.parse_args(argv)
    try:
        out = run(opts)
    except Exception as error:  # pylint: disable=broad-except
        print("keywarden_client.py: " + describe(error), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
