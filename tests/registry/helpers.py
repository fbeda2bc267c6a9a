"""Helpers for the registry tests: a recording transport, a fast retry policy, test images, secret checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from converter.oci.mediatypes import MediaType
from converter.reference import Digest
from converter.registry.client import RegistryClient
from converter.registry.retry import RetryPolicy


@dataclass
class Sleeps:
    """A fake sleep for RetryPolicy: records the delays and advances a fake clock."""

    delays: list[float] = field(default_factory=list)
    now: float = 1000.0

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def fast_retry(sleeps: Sleeps | None = None, **changes: object) -> RetryPolicy:
    """The default policy with a fake sleep/clock and no jitter randomness."""
    sleeps = sleeps if sleeps is not None else Sleeps()
    return RetryPolicy(sleep=sleeps.sleep, clock=sleeps.clock, random=lambda: 0.5, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Seen:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    status: int


class Recorder(httpx.BaseTransport):
    """Wraps a transport and records every request and its status (thread-safe)."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        with self._lock:
            self.seen.append(Seen(request.method, request.url, request.headers, response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()

    def methods(self, path_part: str = "") -> list[str]:
        return [s.method for s in self.seen if path_part in s.url.path]

    def statuses(self, host: str | None = None) -> list[int]:
        """Statuses of the requests to ``host`` ("h:port"), or of all requests."""
        return [s.status for s in self.seen if host is None or s.url.netloc.decode() == host]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


def client_for(recorder: Recorder | None = None, **kwargs: object) -> RegistryClient:
    kwargs.setdefault("retry", fast_retry())
    return RegistryClient(transport=recorder, **kwargs)  # type: ignore[arg-type]


def blob(size: int, seed: int = 0) -> tuple[bytes, Digest]:
    """Deterministic pseudo-random bytes and their digest."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    data = bytes(out[:size])
    return data, Digest.from_bytes(data)


def random_blob(size: int) -> tuple[bytes, Digest]:
    data = os.urandom(size)
    return data, Digest.from_bytes(data)


@dataclass(frozen=True)
class PushedImage:
    manifest: bytes
    media_type: MediaType
    digest: Digest
    config_digest: Digest
    layer_digest: Digest


def push_image(client: RegistryClient, host: str, repository: str, tag: str, *, docker: bool = False,
               seed: int = 0) -> PushedImage:
    """Push a one-layer image (OCI or Docker schema 2) and tag it; returns what was pushed."""
    layer, layer_digest = blob(3000 + seed, seed)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed,
                         "rootfs": {"type": "layers", "diff_ids": [str(layer_digest)]}}).encode()
    config_digest = Digest.from_bytes(config)
    client.push_blob(host, repository, layer_digest, len(layer), io.BytesIO(layer))
    client.push_blob(host, repository, config_digest, len(config), io.BytesIO(config))
    media_type = MediaType.DOCKER_MANIFEST if docker else MediaType.OCI_MANIFEST
    config_type = MediaType.DOCKER_CONFIG if docker else MediaType.OCI_CONFIG
    layer_type = MediaType.DOCKER_LAYER if docker else MediaType.OCI_LAYER_GZIP
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": str(config_digest), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": str(layer_digest), "size": len(layer)}],
    }, indent=3).encode()
    digest = client.put_manifest(host, repository, tag, manifest, media_type)
    return PushedImage(manifest, media_type, digest, config_digest, layer_digest)


def assert_no_secrets(texts: Iterable[object], secrets: Iterable[str]) -> None:
    """No text (exception messages, reprs, log events) contains any of the secrets."""
    secrets = [s for s in secrets if s]
    assert secrets, "the test has no secrets to look for"
    for text in texts:
        rendered = str(text)
        for secret in secrets:
            assert secret not in rendered, f"a secret leaked into: {rendered[:200]}"
