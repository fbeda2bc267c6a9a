"""Image archives as sources, read in place: ``docker-archive:PATH[:REF]`` and ``oci-archive:PATH[:REF]``.

Nothing is unpacked to disk. ``TarMembers`` walks the tar's headers once (``tarfile`` seeks
over the data of every member) and keeps each regular file's data offset and size; a blob is
then read straight from the archive by offset, through its own file handle, so several layers
stream at once. The archive must therefore be an uncompressed tar (what ``docker save`` and
``skopeo copy … oci-archive:`` write); a compressed one is refused with a clear message.

* oci-archive: a tar of an OCI image layout (image-spec ``image-layout.md``): ``index.json``
  and ``blobs/<alg>/<hex>``; ``REF`` is the ``org.opencontainers.image.ref.name`` of one image.
* docker-archive: ``docker save`` output, described by its ``manifest.json`` (one entry per
  image: ``Config``, ``RepoTags``, ``Layers``); ``REF`` is one of the ``RepoTags`` (compared as
  normalised references). There is no manifest in such an archive, so one is synthesised (OCI,
  deterministic): the config's digest, and per layer the digest of its bytes — the member's
  name when it is ``blobs/sha256/<hex>`` (Docker 25+), else for an uncompressed layer its DiffID
  from the config (checked while streaming), else a hash of the member.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from converter.errors import ConverterError, ImageError, InvalidReference
from converter.oci.mediatypes import MediaType
from converter.oci.model import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    parse_config,
    parse_index,
)
from converter.reference import ArchiveRef, Digest, OciLayoutRef, parse_reference
from converter.transports.base import BlobOrigin
from converter.transports.layout import (
    INDEX_FILE,
    LayoutSink,
    VerifiedStream,
    VerifyingReader,
    pick_entry,
    sniff_media_type,
)

_CHUNK = 1 << 20
_BLOB_NAME = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")
_MAX_LINK_HOPS = 8


@dataclass(frozen=True, slots=True)
class Member:
    """A regular file in the archive: where its data starts, and how long it is."""

    offset: int
    size: int


class _Section(io.RawIOBase):
    """``size`` bytes of ``path`` from ``offset``, through a file handle of its own."""

    def __init__(self, path: Path, member: Member) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(member.offset)
        self._left = member.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want == 0:
            return 0
        n = self._file.readinto(view[:want])
        if not n:
            raise ImageError(f"reading {self._file.name}: the archive ends inside a member")
        self._left -= n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


class TarMembers:
    """The regular files of an uncompressed tar, by normalised name (``./`` and ``/`` stripped;
    symbolic and hard links resolved to the file they name)."""

    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        self.what = what
        self._files: dict[str, Member] = {}
        links: dict[str, str] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    name = _normalise(info.name)
                    if info.isreg():
                        if info.sparse is not None:
                            raise ImageError(f"reading {what}: member {info.name} is a sparse file")
                        self._files[name] = Member(info.offset_data, info.size)
                    elif info.issym():
                        links[name] = _normalise(posixpath.join(posixpath.dirname(name), info.linkname))
                    elif info.islnk():
                        links[name] = _normalise(info.linkname)
        except FileNotFoundError:
            raise ImageError(f"reading {what}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"reading {what}: a directory, not an archive (use oci:DIR for a layout)") from None
        except tarfile.ReadError as exc:
            hint = " (compressed archives are not read in place: decompress it first)" if _compressed(path) else ""
            raise ImageError(f"reading {what}: not a tar archive{hint}: {exc}") from None
        except OSError as exc:
            raise ConverterError(f"reading {what}: {exc.strerror or exc}") from exc
        for name in links:
            target = name
            for _ in range(_MAX_LINK_HOPS):
                target = links.get(target, target)
                if target in self._files:
                    self._files[name] = self._files[target]
                    break

    def get(self, name: str) -> Member:
        member = self._files.get(_normalise(name))
        if member is None:
            raise ImageError(f"reading {self.what}: no {name} in the archive")
        return member

    def has(self, name: str) -> bool:
        return _normalise(name) in self._files

    def open(self, name: str) -> BinaryIO:
        return io.BufferedReader(_Section(self.path, self.get(name)), _CHUNK)

    def read(self, name: str, *, max_size: int) -> bytes:
        member = self.get(name)
        if member.size > max_size:
            raise ImageError(f"reading {name} from {self.what}: {member.size} bytes, more than {max_size}")
        with self.open(name) as f:
            return f.read()

    def head(self, name: str, count: int) -> bytes:
        with self.open(name) as f:
            return f.read(count)


def _normalise(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _compressed(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return _magic_type(f.read(4)) is not MediaType.OCI_LAYER
    return False


def _magic_type(head: bytes) -> MediaType:
    """The OCI layer type of a layer blob from its first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return MediaType.OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return MediaType.OCI_LAYER_ZSTD
    return MediaType.OCI_LAYER


class _ArchiveSource:
    """What both archive kinds share: blobs are members, found by digest."""

    def __init__(self, ref: ArchiveRef) -> None:
        self.ref = ref
        self.members = TarMembers(Path(ref.path), what=self.name)

    @property
    def name(self) -> str:
        return f"{self.ref.kind.value}:{self.ref.path}"

    @property
    def origin(self) -> BlobOrigin | None:
        return None

    def member_for(self, digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex}"

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        raw = _Section(self.members.path, self.members.get(self.member_for(digest)))
        reader = VerifyingReader(raw, digest, size=size, what=f"blob {digest} from {self.name}")  # type: ignore[arg-type]
        with VerifiedStream(reader, _CHUNK) as stream:
            yield stream

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        data = self.members.read(self.member_for(digest), max_size=max_size)
        if Digest.from_bytes(data, digest.algorithm) != digest:
            raise ImageError(f"reading blob {digest} from {self.name}: content does not match its digest")
        return data


class OciArchiveSource(_ArchiveSource):
    """An image in a tar of an OCI image layout."""

    def __init__(self, ref: ArchiveRef) -> None:
        super().__init__(ref)
        self.get_manifest()  # a wrong REF fails now, before a destination is created

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        if reference is None:
            reference = self.ref.ref
        if isinstance(reference, Digest):
            data = self.get_blob_bytes(reference, max_size=MAX_MANIFEST_SIZE)
            return data, sniff_media_type(data), reference
        index = parse_index(self.members.read(INDEX_FILE, max_size=MAX_MANIFEST_SIZE), MediaType.OCI_INDEX,
                            what=f"{self.name}/{INDEX_FILE}")
        entry = pick_entry(index, reference, name=self.name, hint="oci-archive:PATH:REF")
        data = self.get_blob_bytes(entry.digest, max_size=MAX_MANIFEST_SIZE)
        return data, str(entry.media_type), entry.digest


class DockerArchiveSource(_ArchiveSource):
    """An image in ``docker save`` output, with a synthesised OCI manifest (module docstring)."""

    def __init__(self, ref: ArchiveRef) -> None:
        super().__init__(ref)
        entry = self._entry()
        self._blobs: dict[Digest, str] = {}
        config_name = _field(entry, "Config", what=self.name)
        config = self.members.read(config_name, max_size=MAX_CONFIG_SIZE)
        config_desc = Descriptor(media_type=MediaType.OCI_CONFIG, digest=Digest.from_bytes(config), size=len(config))
        self._blobs[config_desc.digest] = config_name
        diff_ids = parse_config(config, what=f"config of {self.name}").diff_ids
        names = entry.get("Layers")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ImageError(f"reading {self.name}: manifest.json Layers must be a list of names")
        if len(names) != len(diff_ids):
            raise ImageError(f"reading {self.name}: {len(names)} layers but the config has "
                             f"{len(diff_ids)} diff_ids")
        layers = []
        for name, diff_id in zip(names, diff_ids, strict=True):
            media_type = _magic_type(self.members.head(name, 4))
            digest = self._layer_digest(name, media_type, diff_id)
            self._blobs[digest] = name
            layers.append(Descriptor(media_type=media_type, digest=digest, size=self.members.get(name).size))
        manifest = Manifest(media_type=MediaType.OCI_MANIFEST, config=config_desc, layers=tuple(layers))
        self._manifest = manifest.to_bytes()
        self._digest = Digest.from_bytes(self._manifest)

    def _entry(self) -> dict[str, Any]:
        raw = self.members.read("manifest.json", max_size=MAX_MANIFEST_SIZE)
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ImageError(f"reading {self.name}: manifest.json is not JSON: {exc}") from None
        if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
            raise ImageError(f"reading {self.name}: manifest.json must be a non-empty list of images")
        if self.ref.ref is None:
            if len(doc) != 1:
                raise ImageError(f"reading {self.name}: {len(doc)} images in the archive, name one with "
                                 f"docker-archive:PATH:NAME:TAG (tags: {', '.join(_tags(doc))})")
            entry: dict[str, Any] = doc[0]
            return entry
        want = _normalised(self.ref.ref, what=self.name)
        found = [e for e in doc if any(_normalised(t, what=self.name) == want for t in _repo_tags(e))]
        if len(found) != 1:
            many = f"{len(found)} images are" if found else "no image is"
            raise ImageError(f"reading {self.name}: {many} tagged {self.ref.ref!r} (tags: {', '.join(_tags(doc))})")
        chosen: dict[str, Any] = found[0]
        return chosen

    def _layer_digest(self, name: str, media_type: MediaType, diff_id: Digest) -> Digest:
        match = _BLOB_NAME.fullmatch(_normalise(name))
        if match:
            return Digest(match.group(1), match.group(2))
        if media_type is MediaType.OCI_LAYER:
            return diff_id  # an uncompressed layer's digest is its DiffID; verified while streaming
        h = diff_id.hasher()
        with self.members.open(name) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return Digest(diff_id.algorithm, h.hexdigest())

    def member_for(self, digest: Digest) -> str:
        name = self._blobs.get(digest)
        if name is None:
            raise ImageError(f"reading blob {digest} from {self.name}: not in the archive")
        return name

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        if reference is not None and reference != self._digest:
            raise ImageError(f"reading {self.name}: no manifest {reference}")
        return self._manifest, MediaType.OCI_MANIFEST.value, self._digest


def _field(entry: dict[str, Any], key: str, *, what: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ImageError(f"reading {what}: manifest.json entry without {key}")
    return value


def _repo_tags(entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags") or []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _tags(doc: list[dict[str, Any]]) -> list[str]:
    return [t for e in doc for t in _repo_tags(e)] or ["none"]


def _normalised(text: str, *, what: str) -> str:
    try:
        return str(parse_reference(text))
    except InvalidReference as exc:
        raise ImageError(f"reading {what}: {exc}") from None




class OciArchiveSink:
    """Writes ``oci-archive:PATH[:REF]``: an OCI layout in a private directory beside PATH (the
    images already in PATH are unpacked into it first, so tags accumulate), tarred into PATH
    when the tagged manifest or index — always the last write — arrives. The tar is
    deterministic (sorted names, zero times and owners) and replaces PATH atomically."""

    def __init__(self, ref: ArchiveRef) -> None:
        self.ref = ref
        self.path = Path(ref.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        except OSError as exc:
            raise ConverterError(f"creating {self.name}: {exc.strerror or exc}") from exc
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        if self.path.exists():
            self._unpack_existing()
        self.layout = LayoutSink(OciLayoutRef(self._tmp / "layout", ref.ref))

    @property
    def name(self) -> str:
        return f"oci-archive:{self.path}"

    def _unpack_existing(self) -> None:
        members = TarMembers(self.path, what=self.name)
        dest = self._tmp / "layout"
        for name in ("oci-layout", INDEX_FILE):
            if not members.has(name):
                raise ImageError(f"writing {self.name}: the existing file is not an OCI archive (no {name})")
        with tarfile.open(self.path, mode="r:") as tar:
            tar.extractall(dest, filter="data")

    def close(self) -> None:
        self._finalizer()

    def has_blob(self, digest: Digest) -> bool:
        return self.layout.has_blob(digest)

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        return False

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        self.layout.push_blob(path, digest, size)

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = self.layout.put_manifest(data, media_type, tag)
        if tag is not None:
            self._write_archive()
        return digest

    def _write_archive(self) -> None:
        root = self._tmp / "layout"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tar", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(root.rglob("*")):
                    if path.name.startswith(".tmp-"):
                        continue
                    info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o755 if info.isdir() else 0o644
                    if info.isreg():
                        with open(path, "rb") as member:
                            tar.addfile(info, member)
                    else:
                        tar.addfile(info)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


__all__ = ["DockerArchiveSource", "Member", "OciArchiveSink", "OciArchiveSource", "TarMembers"]
