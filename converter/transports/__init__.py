"""Image locations as sources and sinks: an explicit table from transport name to factories.

No import-time self-registration: ``TRANSPORTS`` lists every transport, and
``open_source``/``open_sink`` pick one from the parsed location (``parse_location``). The
registry client is passed in, never created here, so callers own its lifetime and tests can
hand in a client over ``httpx.MockTransport``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from converter.errors import ConverterError, UsageError
from converter.reference import ArchiveKind, ArchiveRef, DaemonRef, Location, OciLayoutRef, Reference
from converter.transports.archive import DockerArchiveSource, OciArchiveSink, OciArchiveSource
from converter.transports.base import BlobOrigin, ImageSink, ImageSource
from converter.transports.layout import LayoutSink, LayoutSource
from converter.transports.registry import RegistrySink, RegistrySource

if TYPE_CHECKING:
    from converter.registry.client import RegistryClient


@dataclass(frozen=True, slots=True)
class Transport:
    """How to open one kind of location for reading and for writing."""

    name: str
    open_source: Callable[[Location, RegistryClient | None], ImageSource]
    open_sink: Callable[[Location, RegistryClient | None], ImageSink]


def _need_client(location: Location, client: RegistryClient | None) -> RegistryClient:
    if client is None:
        raise ConverterError(f"opening {location}: a registry location needs a registry client")
    return client


def _registry_source(location: Location, client: RegistryClient | None) -> ImageSource:
    assert isinstance(location, Reference)
    return RegistrySource(_need_client(location, client), location)


def _registry_sink(location: Location, client: RegistryClient | None) -> ImageSink:
    assert isinstance(location, Reference)
    return RegistrySink(_need_client(location, client), location)


def _layout_source(location: Location, client: RegistryClient | None) -> ImageSource:
    assert isinstance(location, OciLayoutRef)
    return LayoutSource(location)


def _layout_sink(location: Location, client: RegistryClient | None) -> ImageSink:
    assert isinstance(location, OciLayoutRef)
    return LayoutSink(location)


def _docker_archive_source(location: Location, client: RegistryClient | None) -> ImageSource:
    assert isinstance(location, ArchiveRef)
    return DockerArchiveSource(location)


def _oci_archive_source(location: Location, client: RegistryClient | None) -> ImageSource:
    assert isinstance(location, ArchiveRef)
    return OciArchiveSource(location)


def _oci_archive_sink(location: Location, client: RegistryClient | None) -> ImageSink:
    assert isinstance(location, ArchiveRef)
    return OciArchiveSink(location)


def _daemon_source(location: Location, client: RegistryClient | None) -> ImageSource:
    from converter.transports.daemon import DockerDaemonSource  # loads python-on-whales only when used

    assert isinstance(location, DaemonRef)
    return DockerDaemonSource(location)


def _no_sink(location: Location, client: RegistryClient | None) -> ImageSink:
    raise UsageError(f"destination {location}: Docker cannot load or run EROFS layers, so docker-archive: "
                     "and docker-daemon: are sources only (use oci:, oci-archive: or a registry)")


TRANSPORTS: Mapping[str, Transport] = {
    "docker": Transport("docker", _registry_source, _registry_sink),
    "oci": Transport("oci", _layout_source, _layout_sink),
    "docker-archive": Transport("docker-archive", _docker_archive_source, _no_sink),
    "oci-archive": Transport("oci-archive", _oci_archive_source, _oci_archive_sink),
    "docker-daemon": Transport("docker-daemon", _daemon_source, _no_sink),
}


def transport_name(location: Location) -> str:
    """The ``TRANSPORTS`` key for a parsed location."""
    if isinstance(location, OciLayoutRef):
        return "oci"
    if isinstance(location, ArchiveRef):
        return location.kind.value
    if isinstance(location, DaemonRef):
        return "docker-daemon"
    assert isinstance(location, Reference)
    return "docker"


def open_source(location: Location, *, client: RegistryClient | None = None) -> ImageSource:
    """An ImageSource for ``location`` (a registry reference needs ``client``)."""
    return TRANSPORTS[transport_name(location)].open_source(location, client)


def open_sink(location: Location, *, client: RegistryClient | None = None) -> ImageSink:
    """An ImageSink for ``location`` (a registry reference needs ``client``)."""
    return TRANSPORTS[transport_name(location)].open_sink(location, client)


__all__ = [
    "TRANSPORTS",
    "ArchiveKind",
    "BlobOrigin",
    "DockerArchiveSource",
    "ImageSink",
    "ImageSource",
    "LayoutSink",
    "LayoutSource",
    "Location",
    "OciArchiveSink",
    "OciArchiveSource",
    "RegistrySink",
    "RegistrySource",
    "Transport",
    "open_sink",
    "open_source",
    "transport_name",
]
