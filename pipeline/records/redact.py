"""Credentials out of everything compressflow prints or stores.

A tracking URI such as ``http://user:password@mlflow.example:5000`` (or any other URI
with a user part) is written as ``http://***@mlflow.example:5000``: in MLflow params and
``spec.json``, ``job.json``, ``summary.json`` and the terminal. The job itself still
connects with the real URI; only what is shown or recorded is redacted. An MLflow
server's ``http(s)://`` credentials are moved out of the URI altogether, into MLflow's
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (``credentials_to_env``).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ : userinfo is anything up to the first '@' that has no '/', space
# or quote in it (RFC 3986: user[:password]).
_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"'<>]+@")


def redact(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://***@host``, wherever it appears in
    ``text`` (also inside a longer message); anything else is returned as it is."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def redact_data(data: Any) -> Any:
    """A copy of nested dicts/lists with every string redacted (for JSON records)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    return data


def credentials_to_env(uri: str) -> str:
    """An ``http(s)://user:password@host`` tracking URI without its credentials, which go
    to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` instead (MLflow's own
    basic-auth settings, read on every request). The job then carries, records and prints
    a URI with nothing secret in it. Other URIs are returned unchanged."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.username:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
