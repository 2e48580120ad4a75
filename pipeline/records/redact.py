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
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

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
    """A tracking URI with nothing secret left in it. An ``http(s)://user:password@host``
    server's credentials go to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
    (MLflow's own basic-auth settings, read on every request); a PostgreSQL store's
    password goes to ``PGPASSWORD`` (libpq's, read by psycopg on every connection), the
    user name stays. The job then carries (into Prefect's flow-run parameters too),
    records and prints a URI without the password. Other URIs are returned unchanged."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("postgresql", "postgres") and parts.password is not None:
        os.environ["PGPASSWORD"] = unquote(parts.password)
        return urlunsplit(parts._replace(netloc=_netloc(parts, user=parts.username)))
    if parts.scheme not in ("http", "https") or not parts.username:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    return urlunsplit(parts._replace(netloc=_netloc(parts)))


def _netloc(parts: SplitResult, user: str | None = None) -> str:
    """``[user@]host[:port]`` of ``parts`` (no password), IPv6 hosts in brackets."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{user}@{netloc}" if user else netloc


def password_in(text: str) -> bool:
    """Whether ``text`` is (or holds) a URI with a password in its user part."""
    for match in _CREDENTIALS.finditer(text):
        userinfo = match.group(0).removeprefix(match.group("scheme")).removesuffix("@")
        if ":" in userinfo:
            return True
    return False


def fields_with_password(data: Any, path: str = "") -> list[str]:
    """Dotted paths of the strings in nested dicts/lists that hold a URI with a password."""
    if isinstance(data, str):
        return [path or "value"] if password_in(data) else []
    if isinstance(data, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in data.items()]
    elif isinstance(data, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(data)]
    else:
        return []
    return [found for key, value in items for found in fields_with_password(value, key)]
