"""Shared pieces of the fault tests: the fake's host and credentials, a client on the fake, hooks."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from converter.registry.client import RegistryClient
from converter.registry.credentials import Credentials, StaticCredentials
from tests.registry.fake import FakeRegistry
from tests.registry.helpers import Sleeps, fast_retry

HOST = "reg.example"
PASSWORD = "pa55-word-very-secret"
CREDS = StaticCredentials({HOST: Credentials("alice", PASSWORD)})


def make_client(fake: FakeRegistry, sleeps: Sleeps | None = None, **kwargs: object) -> RegistryClient:
    return RegistryClient(transport=fake.transport(), retry=fast_retry(sleeps), **kwargs)  # type: ignore[arg-type]


def failing_hook(fake: FakeRegistry, times: int, make: Callable[[], httpx.Response], *, method: str = "",
                 path: str = "") -> list[int]:
    """Answer the first ``times`` matching requests with ``make()`` (a Response, or raise)."""
    hits = [0]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if (method and request.method != method) or path not in request.url.path or hits[0] >= times:
            return None
        hits[0] += 1
        return make()

    fake.hooks.append(hook)
    return hits


def storage(seen: list[httpx.Request], data: bytes) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=data)

    return handle


def bearer_setup(realm: str = "https://auth.example/token") -> tuple[FakeRegistry, list[httpx.Request]]:
    asked: list[httpx.Request] = []
    fake = FakeRegistry(bearer_realm=realm, tokens={"tok-1", "tok-2"})

    def issue(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"token": f"tok-{len(asked)}", "expires_in": 300})

    fake.hosts["auth.example"] = issue
    return fake, asked
