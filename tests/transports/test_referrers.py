"""Where a registry has the referrers API, it keeps the list itself: no fallback tag is written.
(Debian's registry lacks the API, so this one case runs against the in-memory fake.)"""

from __future__ import annotations

import time

import httpx

from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor
from converter.reference import Digest
from converter.registry.client import RegistryClient
from converter.transports.referrers import (
    SETTLE_FACTOR,
    SETTLE_MAX,
    SETTLE_MIN,
    ReferrersKept,
    add_referrer,
    settle_for,
)
from tests.registry.fake import FakeRegistry
from tests.registry.helpers import fast_retry

SUBJECT = Digest("sha256", "a" * 64)
ENTRY = Descriptor(MediaType.OCI_MANIFEST.value, Digest("sha256", "b" * 64), 10)


def test_referrers_api_means_no_fallback_tag() -> None:
    fake = FakeRegistry()

    def referrers(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == f"/v2/app/referrers/{SUBJECT}":
            return httpx.Response(200, json={"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value,
                                             "manifests": []},
                                  headers={"Content-Type": MediaType.OCI_INDEX.value})
        return None

    fake.hooks.append(referrers)
    client = RegistryClient(transport=fake.transport(), retry=fast_retry())  # type: ignore[arg-type]
    assert add_referrer(client, fake.host, "app", SUBJECT, ENTRY, settle=0) is ReferrersKept.API
    assert fake.seen() == [("GET", f"/v2/app/referrers/{SUBJECT}")]


def test_no_referrers_api_writes_and_verifies_the_tag() -> None:
    fake = FakeRegistry()  # answers 404 on the referrers route, like distribution 2.8
    client = RegistryClient(transport=fake.transport(), retry=fast_retry())  # type: ignore[arg-type]
    sleeps: list[float] = []
    assert add_referrer(client, fake.host, "app", SUBJECT, ENTRY, sleep=sleeps.append) is ReferrersKept.TAG
    tag = f"/v2/app/manifests/sha256-{'a' * 64}"
    assert [s for s in fake.seen() if s[0] != "GET" or "referrers" not in s[1]] == [
        ("GET", tag), ("PUT", tag), ("GET", tag)]
    assert len(sleeps) == 1


def test_the_settle_wait_follows_the_registrys_round_trips() -> None:
    # Waiting longer than a racing writer's read-modify-write: SETTLE_FACTOR times ours, within bounds.
    assert settle_for(0.001) == SETTLE_MIN
    assert settle_for(0.1) == 0.1 * SETTLE_FACTOR
    assert settle_for(60) == SETTLE_MAX
    fake = FakeRegistry()

    def slow_put(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT":
            time.sleep(0.2)
        return None

    fake.hooks.append(slow_put)
    client = RegistryClient(transport=fake.transport(), retry=fast_retry())  # type: ignore[arg-type]
    sleeps: list[float] = []
    assert add_referrer(client, fake.host, "app", SUBJECT, ENTRY, sleep=sleeps.append) is ReferrersKept.TAG
    [waited] = sleeps
    assert 0.2 * SETTLE_FACTOR <= waited <= SETTLE_MAX
