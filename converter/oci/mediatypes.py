"""Every media type the converter reads or writes, as one StrEnum with predicates.

Why an enum: string literals scattered through the code are how weaker tools end up treating
``application/vnd.erofs`` as tar (media types are an enum, never strings). Predicates live here,
next to the names, as in go-containerregistry's ``types.MediaType``. Values that come off the
wire and are not in this enum stay plain ``str`` (see ``parse_media_type``) so unknown
entries can be carried through an index unchanged.

EROFS layer types come in three *profiles* (docs/oci-layers.md §2 and D-1):

* ``spec``: the draft EROFS image-layer spec, ``application/vnd.erofs[+zstd]``.
* ``containerd-2.1``: ``application/vnd.oci.image.layer.v1.erofs`` (containerd 2.1's differ).
* ``containerd-2.3``: ``application/vnd.erofs.layer.v1[+zstd]`` (containerd 2.3/2.4, nerdctl,
  ``ctr image convert --erofs``).
"""

from __future__ import annotations

import enum

from converter.errors import UnsupportedMediaType, UsageError


class Compression(enum.StrEnum):
    """How a layer blob is wrapped on the wire (not EROFS-internal compression)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class MediaType(enum.StrEnum):
    """Media types of manifests, indexes, configs and layers that the converter knows."""

    # OCI image spec (image-spec/media-types.md)
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

    # Docker image manifest v2 schema 2 (distribution/distribution docs/spec/manifest-v2-2.md)
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    # Docker schema 1: recognised only to refuse it with a useful message.
    DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

    # EROFS, profile "spec" (draft EROFS image-layer spec §2.1, §2.2)
    EROFS = "application/vnd.erofs"
    EROFS_ZSTD = "application/vnd.erofs+zstd"
    EROFS_CHUNK_INDEX = "application/vnd.erofs.chunk-index.v1"
    # EROFS, profile "containerd-2.1"
    OCI_LAYER_EROFS = "application/vnd.oci.image.layer.v1.erofs"
    # EROFS, profile "containerd-2.3" (the older [S0] proposal; mainline containerd)
    EROFS_LAYER_V1 = "application/vnd.erofs.layer.v1"
    EROFS_LAYER_V1_ZSTD = "application/vnd.erofs.layer.v1+zstd"

    # --- predicates -------------------------------------------------------------------------

    @property
    def is_index(self) -> bool:
        return self in _INDEXES

    @property
    def is_manifest(self) -> bool:
        """An image manifest we can convert (OCI or Docker schema 2); schema 1 is not."""
        return self in _MANIFESTS

    @property
    def is_schema1(self) -> bool:
        return self in _SCHEMA1

    @property
    def is_config(self) -> bool:
        return self in (MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG)

    @property
    def is_tar_layer(self) -> bool:
        """A tar changeset layer, compressed or not, distributable or not."""
        return self in _TAR_LAYERS

    @property
    def is_erofs_layer(self) -> bool:
        """Any EROFS layer type of any profile (not the standalone chunk index)."""
        return self in _EROFS_LAYERS

    @property
    def is_foreign(self) -> bool:
        """Non-distributable/foreign: the blob may live only at ``urls`` (docs/oci-layers.md D-14)."""
        return self in _FOREIGN

    @property
    def is_distributable(self) -> bool:
        return not self.is_foreign

    @property
    def compression(self) -> Compression:
        """How a layer blob of this type is wrapped on the wire."""
        if self in _GZIP:
            return Compression.GZIP
        if self in _ZSTD:
            return Compression.ZSTD
        if self.is_tar_layer or self.is_erofs_layer or self is MediaType.EROFS_CHUNK_INDEX:
            return Compression.NONE
        raise ValueError(f"{self.value} is not a layer media type")


_INDEXES = frozenset({MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST_LIST})
_MANIFESTS = frozenset({MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST})
_SCHEMA1 = frozenset({MediaType.DOCKER_SCHEMA1, MediaType.DOCKER_SCHEMA1_SIGNED})
_TAR_LAYERS = frozenset({
    MediaType.OCI_LAYER, MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ZSTD,
    MediaType.OCI_LAYER_ND, MediaType.OCI_LAYER_ND_GZIP, MediaType.OCI_LAYER_ND_ZSTD,
    MediaType.DOCKER_LAYER, MediaType.DOCKER_FOREIGN_LAYER,
})
_EROFS_LAYERS = frozenset({
    MediaType.EROFS, MediaType.EROFS_ZSTD, MediaType.OCI_LAYER_EROFS,
    MediaType.EROFS_LAYER_V1, MediaType.EROFS_LAYER_V1_ZSTD,
})
_FOREIGN = frozenset({
    MediaType.OCI_LAYER_ND, MediaType.OCI_LAYER_ND_GZIP, MediaType.OCI_LAYER_ND_ZSTD,
    MediaType.DOCKER_FOREIGN_LAYER,
})
_GZIP = frozenset({
    MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ND_GZIP, MediaType.DOCKER_LAYER,
    MediaType.DOCKER_FOREIGN_LAYER,
})
_ZSTD = frozenset({
    MediaType.OCI_LAYER_ZSTD, MediaType.OCI_LAYER_ND_ZSTD, MediaType.EROFS_ZSTD,
    MediaType.EROFS_LAYER_V1_ZSTD,
})


def parse_media_type(value: str) -> MediaType | str:
    """The enum member for ``value`` if we know it, else ``value`` unchanged.

    Parameters after ``;`` (``application/json; charset=utf-8`` from some registries) and
    surrounding blanks are dropped before the lookup.
    """
    bare = value.split(";", 1)[0].strip()
    try:
        return MediaType(bare)
    except ValueError:
        return bare


def known(value: str) -> MediaType | None:
    """The enum member for ``value``, or None when the type is not one we know."""
    parsed = parse_media_type(value)
    return parsed if isinstance(parsed, MediaType) else None


class Profile(enum.StrEnum):
    """Which family of EROFS layer media types to emit (docs/oci-layers.md D-1); see the module docstring."""

    SPEC = "spec"
    CONTAINERD_21 = "containerd-2.1"
    CONTAINERD_23 = "containerd-2.3"

    def layer_media_type(self, *, zstd: bool = False) -> MediaType:
        """The layer media type of this profile; ``zstd`` when the blob is zstd-wrapped.

        Internal EROFS compression (``erofs+lz4`` …) does not change the media type (spec §2,
        §3.2): only an outer zstd wrapping does.
        """
        if self is Profile.SPEC:
            return MediaType.EROFS_ZSTD if zstd else MediaType.EROFS
        if self is Profile.CONTAINERD_23:
            return MediaType.EROFS_LAYER_V1_ZSTD if zstd else MediaType.EROFS_LAYER_V1
        if zstd:
            raise UnsupportedMediaType("profile containerd-2.1 has no zstd-wrapped EROFS layer type")
        return MediaType.OCI_LAYER_EROFS

    @property
    def uses_roles(self) -> bool:
        """Whether layers carry ``org.erofs.role`` (only the draft spec defines it, §2.4)."""
        return self is Profile.SPEC


def parse_profile(value: str) -> Profile:
    """A Profile from its CLI/job-file name."""
    try:
        return Profile(value)
    except ValueError:
        names = ", ".join(p.value for p in Profile)
        raise UsageError(f"unknown media-type profile {value!r}; choose one of {names}") from None
