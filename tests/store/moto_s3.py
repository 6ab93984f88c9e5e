#!/usr/bin/env python3
# An S3-compatible endpoint on 127.0.0.1 for tests/supervise.rs (moto's server, in memory):
# prints "READY PORT BUCKET" once the bucket exists, then answers lines on stdin:
#   list PREFIX   -> "KEY SIZE" per object under PREFIX, then "END"
# and stops at end of input. Exit 77 when moto is not installed.
import sys

try:
    import boto3
    from moto.server import ThreadedMotoServer
except ImportError as e:
    print(f"moto is not installed: {e}", file=sys.stderr)
    sys.exit(77)

BUCKET = "libcr-jobs"
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
_, port = server.get_host_and_port()
s3 = boto3.client(
    "s3",
    endpoint_url=f"http://127.0.0.1:{port}",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    region_name="us-east-1",
)
s3.create_bucket(Bucket=BUCKET)
print(f"READY {port} {BUCKET}", flush=True)
for line in sys.stdin:
    words = line.split()
    if words[:1] == ["list"]:
        prefix = words[1] if len(words) > 1 else ""
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                print(o["Key"], o["Size"])
        print("END", flush=True)
server.stop()
