"""Reading and writing ``s3://`` URIs with boto3 (credentials and endpoint from the
standard AWS chain: AWS_* variables, profiles, instance roles; AWS_ENDPOINT_URL or
MLFLOW_S3_ENDPOINT_URL for S3-compatible stores). Local paths pass through."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class StorageError(RuntimeError):
    """An object store operation failed; the message names the URI and the reason."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def client():
    """An S3 client from the credentials and endpoint in effect now: a fresh session each
    time, since boto3's default session keeps the first credentials it resolved."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None)


_REASONS = {
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "no object at that key",
    "AccessDenied": "access denied (check the AWS credentials and the bucket policy)",
    "403": "access denied (check the AWS credentials and the bucket policy)",
    "InvalidAccessKeyId": "the AWS access key id is not known to the endpoint",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key id",
}


def _error_code(err: BaseException) -> str:
    # upload_file wraps the ClientError in S3UploadFailedError, which has no response.
    for e in (err, err.__context__, err.__cause__):
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if e else None
        if code:
            return str(code)
    return ""


def _explain(err: Exception, uri: str, verb: str) -> StorageError:
    """One line naming the URI and the reason; never the credentials."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    code = _error_code(err)
    if isinstance(err, NoCredentialsError):
        reason = (
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or give the machine a role)"
        )
    elif isinstance(err, EndpointConnectionError):
        reason = f"cannot reach the S3 endpoint {err.kwargs.get('endpoint_url', '')}".strip()
    elif code in ("404", "NotFound"):
        # A HEAD answers 404 for a missing bucket and for a missing key alike.
        bucket, _ = split_s3(uri)
        reason = (
            "no object at that key"
            if _bucket_exists(bucket)
            else f"the bucket {bucket!r} does not exist"
        )
    else:
        reason = _REASONS.get(code) or f"{type(err).__name__}: {err}"
    return StorageError(f"cannot {verb} {uri}: {reason}")


def _bucket_exists(bucket: str) -> bool:
    try:
        client().head_bucket(Bucket=bucket)
    except Exception as err:
        # 403: it exists but is not ours to see; only a 404 means it is missing.
        return _error_code(err) not in ("404", "NoSuchBucket", "NotFound")
    return True


def fetch(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local path for ``uri``: local paths as they are, s3 objects downloaded once per
    version. The cache is keyed by the URI and the object's ETag, so an object written
    again at the same key (a "latest" model) is downloaded again, not served stale."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(f"{uri} does not exist")
        return path
    bucket, key = split_s3(uri)
    root = Path(cache_dir or Path(tempfile.gettempdir()) / "compressflow-s3")
    s3 = client()
    try:
        etag = str(s3.head_object(Bucket=bucket, Key=key)["ETag"])
    except Exception as err:  # botocore raises several unrelated types
        raise _explain(err, uri, "read") from None
    digest = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()[:16]
    local = root / digest / (Path(key).name or "object")
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".part")
    try:
        s3.download_file(bucket, key, str(partial))
    except Exception as err:
        raise _explain(err, uri, "read") from None
    partial.replace(local)  # never leave a half-written file where a whole one is expected
    return local


def put(local: str | Path, uri: str) -> str:
    """Copy a local file to ``uri`` (an s3:// URI or a local path); returns ``uri``."""
    if not is_s3(uri):
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != dest.resolve():
            dest.write_bytes(Path(local).read_bytes())
        return uri
    bucket, key = split_s3(uri)
    try:
        client().upload_file(str(local), bucket, key)
    except Exception as err:
        raise _explain(err, uri, "write") from None
    return uri


def probe_writable(uri: str) -> None:
    """Put an empty object at the s3:// ``uri`` and delete it again: the destination takes
    writes (bucket exists, credentials allow it), checked before any work is done."""
    bucket, key = split_s3(uri)
    s3 = client()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
        s3.delete_object(Bucket=bucket, Key=key)
    except Exception as err:
        raise _explain(err, uri, "write") from None


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def inside(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved, when it lies within ``root``; ``StorageError`` otherwise (a name
    that climbs out of the output folder writes nothing)."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    if resolved != top and top not in resolved.parents:
        raise StorageError(f"{path} lies outside {root}: nothing is written there")
    return resolved
