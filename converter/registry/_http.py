"""URL helpers shared by the registry modules: host names, loopback checks, redaction for messages."""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import httpx

# Query parameters that are safe to show; anything else (upload ``_state``, presigned-URL
# signatures such as X-Amz-Signature / X-Amz-Credential, tokens) is replaced.
_PUBLIC_PARAMS = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),  # a JWT
)


def host_port(url: httpx.URL) -> str:
    """``host[:port]`` as references write it (IPv6 in brackets)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host


def split_host(registry: str) -> str:
    """The host part of ``host[:port]`` (without IPv6 brackets)."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.rpartition(":")[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    host = split_host(registry).lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: httpx.URL | str) -> str:
    """The URL for messages and logs: no user info or fragment; unknown query values masked."""
    url = httpx.URL(url)
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v if k in _PUBLIC_PARAMS else "REDACTED") for k, v in url.params.multi_items()
    ]
    clean = url.copy_with(username=None, password=None, fragment=None, query=None)
    return str(clean.copy_merge_params(params)) if params else str(clean)


def escape_controls(text: str) -> str:
    """``text`` with every control or format character (ESC, BEL, CR, C1, bidi overrides, ...)
    written as a Python escape, so remote text cannot drive the terminal or forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


def _escape(char: str) -> str:
    if unicodedata.category(char) == "Zs":  # other spaces are harmless
        return char
    return ascii(char)[1:-1]


def scrub(text: str, limit: int = 300) -> str:
    """A registry-supplied message made safe to show: secret-looking words masked, whitespace
    runs made one space, control characters escaped, length capped."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("<redacted>", text)
    text = escape_controls(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
