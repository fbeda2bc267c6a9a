"""Keeping a registry's list of a subject's referrers: the referrers API, else the fallback tag.

Distribution spec 1.1: a registry with the referrers API indexes every pushed manifest that
has a ``subject`` itself (``GET /v2/<name>/referrers/<digest>`` answers 200). One without it
answers 404 there, and then the client that pushed the referrer must add it to the image index
under the tag ``sha256-<hex>`` (``converter.oci.referrers``): read, add, write.

That read-modify-write has no compare-and-swap in the API (registries ignore ``If-Match`` on
manifests), so two conversions of one source at the same time can each write a list missing
the other's entry. Every writer therefore re-reads the tag ``settle`` seconds after writing and
starts over when its entry is gone; whoever loses a race re-adds its entry on top of the
winner's list. Threads of one process also take a lock per (repository, subject) first.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from converter.errors import NotFound, RegistryError
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor, Index
from converter.oci.referrers import lists, parse_referrers, referrers_tag, with_referrer
from converter.reference import Digest

if TYPE_CHECKING:
    from converter.registry.client import RegistryClient
    from converter.transports.registry import BlobLocks

log = structlog.get_logger()

#: After writing the fallback tag, wait longer than a racing writer's read-modify-write, then
#: read it again: a writer that read the old list before our write has written by then, and if
#: it dropped our entry, we add it again. Its round trips go to the same registry as ours, so
#: the wait is SETTLE_FACTOR times our own read plus write, within [SETTLE_MIN, SETTLE_MAX]
#: seconds (a fixed 0.5 s was 8 % of converting the benchmark image on a local registry, whose
#: read plus write takes ~10 ms).
SETTLE_FACTOR = 4
SETTLE_MIN = 0.1
SETTLE_MAX = 2.0
ATTEMPTS = 6


class ReferrersKept(enum.StrEnum):
    """Who lists the referrer: the registry's referrers API, or the fallback tag we wrote."""

    API = "referrers-api"
    TAG = "fallback-tag"


def _read(client: RegistryClient, registry: str, repository: str, tag: str) -> Index | None:
    try:
        data, media_type, _ = client.get_manifest(registry, repository, tag)
    except NotFound:
        return None
    return parse_referrers(data, str(media_type), what=f"referrers tag {registry}/{repository}:{tag}")


def add_referrer(client: RegistryClient, registry: str, repository: str, subject: Digest, entry: Descriptor, *,
                 locks: BlobLocks | None = None, settle: float | None = None, attempts: int = ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, put: Callable[[str, bytes], object] | None = None,
                 after_read: Callable[[], None] | None = None) -> ReferrersKept:
    """Make ``entry`` (a manifest whose ``subject`` is ``subject``) listed among the subject's
    referrers in ``registry/repository``. ``put(tag, index bytes)`` writes the fallback tag
    (default: a plain manifest PUT; a sink adds its MANIFEST_BLOB_UNKNOWN retry). ``after_read``
    is a seam for tests (runs between the read and the write of the fallback tag). ``settle``
    fixes the wait before the re-read (None: measured, see ``SETTLE_FACTOR``)."""
    if client.get_referrers(registry, repository, subject) is not None:
        return ReferrersKept.API
    tag = referrers_tag(subject)
    where = f"{registry}/{repository}:{tag}"
    lock = locks(registry, repository + "/_referrers", subject) if locks is not None else None
    if lock is not None:
        lock.acquire()
    try:
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            current = _read(client, registry, repository, tag)
            if after_read is not None:
                after_read()
            if current is not None and lists(current, entry.digest):
                return ReferrersKept.TAG
            new = with_referrer(current, entry)
            if put is not None:
                put(tag, new.to_bytes())
            else:
                client.put_manifest(registry, repository, tag, new.to_bytes(), MediaType.OCI_INDEX.value)
            sleep(settle_for(time.monotonic() - started) if settle is None else settle)
            again = _read(client, registry, repository, tag)
            if again is not None and lists(again, entry.digest):
                log.debug("referrers_tag_updated", tag=where, entries=len(again.manifests), attempt=attempt)
                return ReferrersKept.TAG
            log.info("referrers_tag_conflict", tag=where, referrer=str(entry.digest), attempt=attempt)
    finally:
        if lock is not None:
            lock.release()
    raise RegistryError(f"updating referrers tag {where}: {entry.digest} was overwritten by concurrent "
                        f"writers {attempts} times")


def settle_for(read_modify_write: float) -> float:
    """The wait before re-reading the fallback tag, for our own read+write time (seconds)."""
    return min(SETTLE_MAX, max(SETTLE_MIN, SETTLE_FACTOR * read_modify_write))


__all__ = ["ATTEMPTS", "SETTLE_FACTOR", "SETTLE_MAX", "SETTLE_MIN", "ReferrersKept", "add_referrer", "settle_for"]
