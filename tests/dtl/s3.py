#!/usr/bin/env python3
"""Minimal SigV4-signed S3 calls for the DTL shell tests (stdlib only, path-style).

  s3.py status                  HTTP status of GET / (ListBuckets)
  s3.py mkbucket BUCKET         create a bucket (exit 1 unless HTTP 200)
  s3.py list BUCKET PREFIX      keys under PREFIX, one a line (every page)

Endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION (default us-east-1).
"""
import datetime
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

EP = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
AK = os.environ["AWS_ACCESS_KEY_ID"]
SK = os.environ["AWS_SECRET_ACCESS_KEY"]
REGION = os.environ.get("AWS_REGION", "us-east-1")


def request(method, path, query=None):
    query = query or {}
    u = urllib.parse.urlparse(EP)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    q = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    cpath = urllib.parse.quote(path, safe="/-_.~")
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz}
    signed = ";".join(sorted(headers))
    canon = "\n".join(
        [method, cpath, q, "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canon.encode()).hexdigest()])

    def h(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()

    key = h(h(h(h(("AWS4" + SK).encode(), day), REGION), "s3"), "aws4_request")
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    hdrs = {k: v for k, v in headers.items() if k != "host"}
    hdrs["Authorization"] = f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={signed}, Signature={sig}"
    req = urllib.request.Request(EP + cpath + ("?" + q if q else ""), method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def main():
    cmd = sys.argv[1]
    if cmd == "status":
        print(request("GET", "/")[0])
    elif cmd == "mkbucket":
        st, body = request("PUT", "/" + sys.argv[2])
        if st != 200:
            sys.exit(f"create bucket {sys.argv[2]}: HTTP {st} {body[:200]!r}")
    elif cmd == "list":
        bucket, prefix, token = sys.argv[2], sys.argv[3], None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            st, body = request("GET", "/" + bucket, q)
            if st != 200:
                sys.exit(f"list {bucket}/{prefix}: HTTP {st} {body[:200]!r}")
            root = ET.fromstring(body)
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for c in root.iter(ns + "Contents"):
                print(c.find(ns + "Key").text)
            t = root.find(ns + "NextContinuationToken")
            if root.findtext(ns + "IsTruncated") == "true" and t is not None:
                token = t.text
            else:
                break
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
