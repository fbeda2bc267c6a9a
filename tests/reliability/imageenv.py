"""Shared helpers for the image-level reliability tests: the sample image in a real registry,
direct (proxy-free) inspection of what a registry holds, and retries that do not sleep.

Tests set attempts and the read timeout with the image CLI's own flags (``--retries``,
``--timeout``). Only the backoff sleeps (up to 10 s, and Retry-After waits) are not a flag:
``fast_sleeps`` wraps ``converter.cli.image.make_client`` so that the policy built from the
flags records its sleeps instead of sleeping, and records what the flags produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from converter.cli import image as imagecli
from converter.registry.client import DEFAULT_RETRY, RegistryClient, Timeouts
from converter.registry.retry import RetryPolicy
from converter.testing.sample import SampleLayout, sample_layers, write_oci_layout

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@dataclass(frozen=True)
class Sample:
    """The sample image as an OCI layout: its manifest digest, config and layer digests."""

    layout: SampleLayout
    manifest: str
    config: str
    layers: tuple[str, ...]


def write_sample(directory: Path, tag: str = "v1") -> Sample:
    """Write the embedded sample image (three gzip layers) as an OCI layout in ``directory``."""
    layout = write_oci_layout(directory, sample_layers(), tag=tag)
    doc = json.loads((directory / "blobs" / "sha256" / layout.manifest_digest.split(":", 1)[1]).read_bytes())
    return Sample(layout, layout.manifest_digest, doc["config"]["digest"],
                  tuple(d["digest"] for d in doc["layers"]))


def skopeo_copy(sample: Sample, dest: str, *, creds: str | None = None) -> None:
    """Copy the sample layout to ``dest`` (``host/repo:tag``) with skopeo (not our code)."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (make setup installs it)")
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds is not None:
        cmd.append(f"--dest-creds={creds}")
    cmd += [f"oci:{sample.layout.path}:{sample.layout.tag}", f"docker://{dest}"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 0, f"skopeo copy to {dest}: {res.stderr[-1000:]}"


@dataclass
class Probe:
    """Looks at a registry directly (not through the fault proxy) over plain HTTP."""

    host: str
    auth: tuple[str, str] | None = None
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = httpx.Client(base_url=f"http://{self.host}", auth=self.auth, timeout=30)

    def close(self) -> None:
        self._client.close()

    def tag_digest(self, repository: str, tag: str) -> str | None:
        """The digest ``repository:tag`` points at, or None if there is no such tag."""
        resp = self._client.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT})
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.headers["Docker-Content-Digest"]

    def missing_blobs(self, repository: str, digest: str) -> list[str]:
        """Blobs (config and layers, of every manifest of an index) the image lacks: [] when whole."""
        resp = self._client.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": ACCEPT})
        resp.raise_for_status()
        doc = resp.json()
        if "manifests" in doc:
            return [b for m in doc["manifests"] for b in self.missing_blobs(repository, m["digest"])]
        missing = []
        for desc in [doc["config"], *doc["layers"]]:
            head = self._client.head(f"/v2/{repository}/blobs/{desc['digest']}")
            if head.status_code != 200:
                missing.append(desc["digest"])
        return missing


@dataclass
class FastRetry:
    """What ``convert``'s retry policy was asked to sleep (it never really sleeps), and the
    attempts and read timeout of each client ``convert`` built (from its flags)."""

    sleeps: list[float] = field(default_factory=list)
    clients: list[tuple[int, float | None]] = field(default_factory=list)


@contextlib.contextmanager
def fast_sleeps(record: FastRetry) -> Iterator[FastRetry]:
    """Let ``convert`` build its registry client from its flags, with sleeps recorded in ``record``."""
    real = imagecli.make_client

    def make_client(*, retry: RetryPolicy | None = None, timeout: float | Timeouts | None = None,
                    **kwargs: Any) -> RegistryClient:
        policy = retry if retry is not None else DEFAULT_RETRY
        record.clients.append((policy.attempts, timeout.stall if isinstance(timeout, Timeouts) else timeout))
        return real(retry=dataclasses.replace(policy, sleep=record.sleeps.append), timeout=timeout, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imagecli, "make_client", make_client)
        yield record
