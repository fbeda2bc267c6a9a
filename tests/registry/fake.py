"""An in-memory distribution registry behind httpx.MockTransport, for faults a real server won't produce.

It implements just enough of the API (blobs, uploads, manifests, paginated tags, Basic or bearer
auth) for the client's happy path, and lets a test put *fault hooks* in front: functions that
see each authorised request first and may answer it themselves (a 503 with Retry-After, a body that breaks
off mid-transfer, a redirect to another host, ...). Other hosts (a token realm, blob storage)
are plain handler functions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

Hook = Callable[[httpx.Request], httpx.Response | None]

_ROUTE = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>blobs/uploads|blobs|manifests|tags)/?(?P<rest>.*)$")


class BrokenStream(httpx.SyncByteStream):
    """A body that sends ``data[:cut]`` and then fails like a reset connection."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data = data
        self.cut = cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.data[: self.cut]
        raise httpx.ReadError("connection reset by peer")


class RawStream(httpx.SyncByteStream):
    """A body httpx does not load (and decode) up front, as a network answer: ``data`` as sent."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "message": message}]}, headers=headers)


@dataclass
class FakeRegistry:
    """State and request log of the fake; ``transport()`` serves it (and ``hosts``) to a client."""

    host: str = "reg.example"
    basic: tuple[str, str] | None = None  # require these Basic credentials
    bearer_realm: str | None = None  # require "Bearer <token from tokens>" and challenge with this realm
    tokens: set[str] = field(default_factory=set)
    honour_page_size: bool = True
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)
    hosts: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def seen(self, host: str | None = None) -> list[tuple[str, str]]:
        """(method, path) of the requests to ``host`` (default: the registry)."""
        want = host or self.host
        return [(r.method, r.url.path) for r in self.requests if r.url.netloc.decode() == want]

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        netloc = request.url.netloc.decode()
        if netloc != self.host:
            return self.hosts[netloc](request)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        for hook in self.hooks:
            answer = hook(request)
            if answer is not None:
                return answer
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        match = _ROUTE.match(request.url.path)
        if match is None:
            return error(404, "NOT_FOUND", "no route")
        repo, kind, rest = match["repo"], match["kind"], match["rest"]
        if kind == "blobs":
            return self._blob(request, rest)
        if kind == "blobs/uploads":
            return self._upload(request, repo, rest)
        if kind == "manifests":
            return self._manifest(request, repo, rest)
        return self._tags(request, repo)

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("Authorization", "")
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic).encode()).decode()
            if header != expected:
                return error(401, "UNAUTHORIZED", "authentication required",
                             {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.bearer_realm is not None and header.removeprefix("Bearer ") not in self.tokens:
            challenge = f'Bearer realm="{self.bearer_realm}",service="fake"'
            return error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
        return None

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs.get(digest)
        if data is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown")
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=data)

    def _upload(self, request: httpx.Request, repo: str, session: str) -> httpx.Response:
        if request.method == "POST":
            mount = request.url.params.get("mount")
            if mount and mount in self.blobs:
                return httpx.Response(201, headers={"Location": f"/v2/{repo}/blobs/{mount}"})
            name = uuid.uuid4().hex
            self.uploads[name] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{name}?_state=s3cr3t",
                                                "Range": "0-0"})
        if session not in self.uploads:
            return error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown")
        buffer = self.uploads[session]
        if request.method == "DELETE":
            del self.uploads[session]
            return httpx.Response(204)
        buffer += request.content
        location = f"/v2/{repo}/blobs/uploads/{session}?_state=s3cr3t"
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": location, "Range": f"0-{len(buffer) - 1}"})
        digest = request.url.params.get("digest", "")
        actual = "sha256:" + hashlib.sha256(buffer).hexdigest()
        del self.uploads[session]
        if digest != actual:
            return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        self.blobs[digest] = bytes(buffer)
        return httpx.Response(201, headers={"Location": f"/v2/{repo}/blobs/{digest}",
                                            "Docker-Content-Digest": digest})

    def _manifest(self, request: httpx.Request, repo: str, reference: str) -> httpx.Response:
        if request.method == "PUT":
            digest = "sha256:" + hashlib.sha256(request.content).hexdigest()
            media_type = request.headers["Content-Type"]
            self.manifests[(repo, digest)] = (request.content, media_type)
            self.manifests[(repo, reference)] = (request.content, media_type)
            if not reference.startswith("sha256:"):
                self.tags.setdefault(repo, []).append(reference)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        found = self.manifests.get((repo, reference))
        if found is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        data, media_type = found
        return httpx.Response(200, content=data, headers={
            "Content-Type": media_type, "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()})

    def _tags(self, request: httpx.Request, repo: str) -> httpx.Response:
        """Spec pagination: ``n`` entries after ``last``, and a Link to the next page if any remain."""
        tags = sorted(self.tags.get(repo, []))
        if not tags:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry")
        n = request.url.params.get("n")
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {}
        if n and self.honour_page_size and len(tags) > int(n):
            tags = tags[: int(n)]
            headers["Link"] = f'</v2/{repo}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        return httpx.Response(200, json={"name": repo, "tags": tags}, headers=headers)


def json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()
