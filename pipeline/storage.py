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
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _explain(err: Exception, uri: str, verb: str) -> StorageError:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    reasons = {
        "NoSuchBucket": "the bucket does not exist",
        "NoSuchKey": "no object at that key",
        "404": "no object at that key (or the bucket does not exist)",
        "AccessDenied": "access denied (check the AWS credentials and the bucket policy)",
        "403": "access denied (check the AWS credentials and the bucket policy)",
    }
    reason = reasons.get(code) or f"{type(err).__name__}: {err}"
    return StorageError(f"cannot {verb} {uri}: {reason}")


def fetch(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local path for ``uri``: local paths as they are, s3 objects downloaded once."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(f"{uri} does not exist")
        return path
    bucket, key = split_s3(uri)
    root = Path(cache_dir or Path(tempfile.gettempdir()) / "compressflow-s3")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    local = root / digest / (Path(key).name or "object")
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        client().download_file(bucket, key, str(local))
    except Exception as err:  # botocore raises several unrelated types
        raise _explain(err, uri, "read") from None
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


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))
