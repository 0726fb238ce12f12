#!/usr/bin/python3
"""Delegated signing from Python: Debian's python3-grpcio, stubs generated
from the .proto files at run time (as keywarden_client.py does), mutual TLS.

Fetches the alias's public key and certificate, signs DATA_FILE with
SignData and its hash with SignDigest, and prints one JSON line:

  {"alias": ..., "key_type": ..., "public_key_der_b64": ...,
   "certificate_der_b64": ..., "data_signature_b64": ...,
   "digest_signature_b64": ...}

Exit status 1, with the error on stderr, on any failure.
"""

import argparse
import base64
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keywarden_client import describe, generate_stubs, read  # noqa: E402

HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def run(opts):
    import grpc  # python3-grpcio

    out_dir = tempfile.mkdtemp(prefix="keywarden-stubs-")
    try:
        generate_stubs(opts.proto_dir, out_dir, ("keywarden.proto", "signing.proto"))
        sys.path.insert(0, out_dir)
        pb = importlib.import_module("keywarden.v1.signing_pb2")
        pb_grpc = importlib.import_module("keywarden.v1.signing_pb2_grpc")

        # "rsa-pss-sha256" -> SIGNATURE_ALGORITHM_RSA_PSS_SHA256
        algorithm = pb.SignatureAlgorithm.Value(
            "SIGNATURE_ALGORITHM_" + opts.algorithm.upper().replace("-", "_"))
        data = read(opts.data_file)
        digest = HASHES[opts.algorithm.rsplit("-", 1)[1]](data).digest()
        extra = {}
        if opts.salt is not None:
            extra["pss_salt_length"] = opts.salt

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(opts.ca),
            private_key=read(opts.key),
            certificate_chain=read(opts.cert),
        )
        options = []
        if opts.server_name:
            options.append(("grpc.ssl_target_name_override", opts.server_name))
        with grpc.secure_channel(opts.target, credentials, options=options) as channel:
            stub = pb_grpc.SigningStub(channel)
            info = stub.GetSigningKey(pb.GetSigningKeyRequest(alias=opts.alias),
                                      timeout=opts.timeout)
            by_data = stub.SignData(
                pb.SignDataRequest(alias=opts.alias, algorithm=algorithm, data=data, **extra),
                timeout=opts.timeout)
            by_digest = stub.SignDigest(
                pb.SignDigestRequest(alias=opts.alias, algorithm=algorithm, digest=digest,
                                     **extra),
                timeout=opts.timeout)

        def b64(raw):
            return base64.b64encode(raw).decode("ascii")

        return {
            "alias": info.alias,
            "key_type": info.key_type,
            "public_key_der_b64": b64(info.public_key),
            "certificate_der_b64": b64(info.certificate),
            "data_signature_b64": b64(by_data.signature),
            "digest_signature_b64": b64(by_digest.signature),
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", required=True, help="directory holding keywarden/v1/*.proto")
    parser.add_argument("--target", required=True, help="HOST:PORT of keywardend")
    parser.add_argument("--cert", required=True, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, help="client private key (PEM)")
    parser.add_argument("--ca", required=True, help="trust anchor for the server (PEM)")
    parser.add_argument("--server-name", default="", help="TLS name to check (override)")
    parser.add_argument("--alias", required=True, help="signing key alias")
    parser.add_argument("--algorithm", required=True,
                        help="e.g. rsa-pkcs1-sha256, rsa-pss-sha384, ecdsa-sha256")
    parser.add_argument("--salt", type=int, default=None, help="RSA-PSS salt length")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("data_file", help="the data to sign")
    opts = parser.parse_args(argv)
    try:
        out = run(opts)
    except Exception as error:  # pylint: disable=broad-except
        print("keywarden_sign.py: " + describe(error), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
