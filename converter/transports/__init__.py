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

from converter.errors import ConverterError
from converter.reference import OciLayoutRef, Reference
from converter.transports.base import BlobOrigin, ImageSink, ImageSource
from converter.transports.layout import LayoutSink, LayoutSource
from converter.transports.registry import RegistrySink, RegistrySource

if TYPE_CHECKING:
    from converter.registry.client import RegistryClient

Location = Reference | OciLayoutRef


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


TRANSPORTS: Mapping[str, Transport] = {
    "docker": Transport("docker", _registry_source, _registry_sink),
    "oci": Transport("oci", _layout_source, _layout_sink),
}


def transport_name(location: Location) -> str:
    """The ``TRANSPORTS`` key for a parsed location."""
    return "oci" if isinstance(location, OciLayoutRef) else "docker"


def open_source(location: Location, *, client: RegistryClient | None = None) -> ImageSource:
    """An ImageSource for ``location`` (a registry reference needs ``client``)."""
    return TRANSPORTS[transport_name(location)].open_source(location, client)


def open_sink(location: Location, *, client: RegistryClient | None = None) -> ImageSink:
    """An ImageSink for ``location`` (a registry reference needs ``client``)."""
    return TRANSPORTS[transport_name(location)].open_sink(location, client)


__all__ = [
    "TRANSPORTS",
    "BlobOrigin",
    "ImageSink",
    "ImageSource",
    "LayoutSink",
    "LayoutSource",
    "Location",
    "RegistrySink",
    "RegistrySource",
    "Transport",
    "open_sink",
    "open_source",
    "transport_name",
]
