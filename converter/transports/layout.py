"""OCI image layout directories (``oci:DIR[:TAG]``) as an ``ImageSource`` and an ``ImageSink``.

Layout (image-spec ``image-layout.md``): ``DIR/oci-layout`` holds the version,
``DIR/blobs/ALG/HEX`` the content, ``DIR/index.json`` the entry points, each tagged with the
``org.opencontainers.image.ref.name`` annotation (what skopeo and umoci call the tag).

Writes are atomic-ish, so a crash never leaves a half-written blob under its final name or
an ``index.json`` naming missing content: every file is written to a fresh temporary name in
the same directory (created exclusively, never through an existing path) and renamed into
place with the mode the umask gives new files; blobs come first and ``index.json`` last. Blob
files are hard-linked from the pipeline's workdir when possible (same filesystem), copied
otherwise. Reads treat the directory as untrusted: only regular files are read, and JSON
files (``index.json``, ``oci-layout``, manifests) no further than the registry's size caps.
Concurrent writers in one process are serialised by a lock; several processes
writing one layout at once are not supported (neither skopeo nor umoci support it either).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from converter.errors import ConverterError, ImageError
from converter.files import create_temp, link_temp, new_file_mode, open_regular, read_regular, set_mode, write_atomic
from converter.oci.mediatypes import MediaType
from converter.oci.model import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    canonical_json,
    load_json_object,
    parse_index,
)
from converter.reference import Digest, OciLayoutRef
from converter.transports.base import BlobOrigin

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
DEFAULT_TAG = "latest"
_CHUNK = 1 << 20


class VerifyingReader(io.RawIOBase):
    """Wraps a stream and checks its digest and size when the end is reached."""

    def __init__(self, raw: BinaryIO, digest: Digest, *, size: int | None, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest
        self._hash = digest.hasher()
        self._size = size
        self._seen = 0
        self._what = what
        self._checked = False
        self._verified = False

    @property
    def verified(self) -> bool:
        """True once the end was read and the size and digest matched."""
        return self._verified

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._raw.readinto(view)  # type: ignore[attr-defined]
        if n:
            self._hash.update(view[:n])
            self._seen += n
            if self._size is not None and self._seen > self._size:
                raise ImageError(f"reading {self._what}: more than the expected {self._size} bytes")
        elif not self._checked:
            self._checked = True
            if self._size is not None and self._seen != self._size:
                raise ImageError(f"reading {self._what}: {self._seen} bytes, expected {self._size}")
            if self._hash.hexdigest() != self._digest.hex:
                raise ImageError(f"reading {self._what}: content does not match digest {self._digest}")
            self._verified = True
        return n or 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.close()
        super().close()


class VerifiedStream(io.BufferedReader):
    """A buffered ``VerifyingReader`` that shows its ``verified``, so a reader that would hash the
    blob to check it (the layer graph's pull) can trust the check already made."""

    def __init__(self, raw: VerifyingReader, buffer_size: int = _CHUNK) -> None:
        super().__init__(raw, buffer_size)

    @property
    def verified(self) -> bool:
        return cast(VerifyingReader, self.raw).verified


def _sniff_media_type(data: bytes) -> str:
    """A manifest's media type from its own ``mediaType`` field, else from its shape."""
    try:
        obj = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if "manifests" in obj:
        return MediaType.OCI_INDEX.value
    if "config" in obj:
        return MediaType.OCI_MANIFEST.value
    return ""


def _is_regular(path: Path) -> bool:
    """Whether ``path`` itself (not a symlink's target) is a regular file."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def pick_entry(index: Index, tag: str | None, *, name: str, hint: str = "oci:DIR:TAG") -> Descriptor:
    """The entry of a layout's ``index.json`` tagged ``tag`` (None: the only entry)."""
    if tag is None:
        if len(index.manifests) != 1:
            tags = sorted(m.annotations.get(REF_NAME, "") for m in index.manifests)
            raise ImageError(f"reading {name}: {len(index.manifests)} images in the layout, "
                             f"name one with {hint} (tags: {', '.join(t for t in tags if t)})")
        return index.manifests[0]
    found = [m for m in index.manifests if m.annotations.get(REF_NAME) == tag]
    if not found:
        raise ImageError(f"reading {name}: no image tagged {tag!r}")
    if len(found) > 1:
        raise ImageError(f"reading {name}: {len(found)} images tagged {tag!r}")
    return found[0]


def sniff_media_type(data: bytes) -> str:
    return _sniff_media_type(data)


class _Layout:
    """Shared path handling of a layout directory."""

    def __init__(self, ref: OciLayoutRef) -> None:
        self.ref = ref
        self.root = Path(ref.path)

    @property
    def name(self) -> str:
        return f"oci:{self.root}"

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def read_index(self) -> Index:
        path = self.root / INDEX_FILE
        try:
            data = read_regular(path, limit=MAX_MANIFEST_SIZE, what=f"{self.name}/{INDEX_FILE}")
        except FileNotFoundError:
            if not (self.root / LAYOUT_FILE).exists():
                raise ImageError(f"reading {self.name}: not an OCI image layout (no {LAYOUT_FILE})") from None
            raise ImageError(f"reading {self.name}: no {INDEX_FILE}") from None
        except OSError as exc:
            raise ConverterError(f"reading {self.name}/{INDEX_FILE}: {exc.strerror or exc}") from exc
        return parse_index(data, MediaType.OCI_INDEX, what=f"{self.name}/{INDEX_FILE}")

    def read_blob(self, digest: Digest, *, max_size: int) -> bytes:
        path = self.blob_path(digest)
        try:
            with open_regular(path, what=f"blob {digest} from {self.name}") as f:
                data = f.read(max_size + 1)
        except FileNotFoundError:
            raise ImageError(f"reading blob {digest} from {self.name}: missing") from None
        except OSError as exc:
            raise ConverterError(f"reading blob {digest} from {self.name}: {exc.strerror}") from exc
        if len(data) > max_size:
            raise ImageError(f"reading blob {digest} from {self.name}: larger than {max_size} bytes")
        if hashlib.new(digest.algorithm, data).hexdigest() != digest.hex:
            raise ImageError(f"reading blob {digest} from {self.name}: content does not match its digest")
        return data


class LayoutSource(_Layout):
    """Reads images from an OCI image layout directory."""

    def __init__(self, ref: OciLayoutRef) -> None:
        super().__init__(ref)
        if not (self.root / LAYOUT_FILE).is_file():
            raise ImageError(f"opening {self.name}: not an OCI image layout (no {LAYOUT_FILE})")

    @property
    def origin(self) -> BlobOrigin | None:
        return None

    def _entry(self, tag: str | None) -> Descriptor:
        return pick_entry(self.read_index(), tag, name=self.name)

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        if reference is None:
            reference = self.ref.tag
        if isinstance(reference, Digest):
            data = self.read_blob(reference, max_size=MAX_MANIFEST_SIZE)
            return data, _sniff_media_type(data), reference
        entry = self._entry(reference)
        data = self.read_blob(entry.digest, max_size=MAX_MANIFEST_SIZE)
        return data, str(entry.media_type), entry.digest

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        path = self.blob_path(digest)
        try:
            raw = open_regular(path, what=f"blob {digest} from {self.name}")  # closed by the reader below
        except FileNotFoundError:
            raise ImageError(f"reading blob {digest} from {self.name}: missing") from None
        except OSError as exc:
            raise ConverterError(f"reading blob {digest} from {self.name}: {exc.strerror}") from exc
        reader = VerifyingReader(raw, digest, size=size, what=f"blob {digest} from {self.name}")
        with VerifiedStream(reader) as stream:
            yield stream

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        return self.read_blob(digest, max_size=max_size)


class LayoutSink(_Layout):
    """Writes images into an OCI image layout directory, creating it if needed."""

    def __init__(self, ref: OciLayoutRef) -> None:
        super().__init__(ref)
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            layout = self.root / LAYOUT_FILE
            if not layout.exists():
                self._write_atomic(layout, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
            else:
                what = f"{self.name}/{LAYOUT_FILE}"
                load_json_object(read_regular(layout, limit=1 << 16, what=what), what=what, limit=1 << 16)
            if not (self.root / INDEX_FILE).exists():
                empty = Index(media_type=MediaType.OCI_INDEX, manifests=())
                self._write_atomic(self.root / INDEX_FILE, empty.to_bytes())
        except OSError as exc:
            raise ConverterError(f"creating OCI layout {self.root}: {exc.strerror}") from exc

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        write_atomic(path, data, prefix=".tmp-")

    def has_blob(self, digest: Digest) -> bool:
        return _is_regular(self.blob_path(digest))

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        return False  # a directory cannot mount from a registry

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        final = self.blob_path(digest)
        try:
            actual = path.stat().st_size
            if actual != size:
                raise ImageError(f"pushing blob {digest} to {self.name}: {path} has {actual} bytes, "
                                 f"expected {size}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if _is_regular(final) and final.stat().st_size == size:
                return
            # Temporary names are fresh and created exclusively: a path planted in blobs/ (a
            # symlink, say) is never written through, chmod'ed, or renamed into place.
            tmp: Path | None = None
            try:
                try:
                    tmp = link_temp(path, final.parent, ".tmp-")  # the pipeline hashed it already
                except OSError:
                    tmp = self._copy_verified(path, final.parent, digest)
                set_mode(tmp, new_file_mode())
                os.replace(tmp, final)
            finally:
                if tmp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
        except OSError as exc:
            raise ConverterError(f"pushing blob {digest} to {self.name}: {exc.strerror or exc}") from exc

    def _copy_verified(self, src: Path, directory: Path, digest: Digest) -> Path:
        """A verified copy of ``src`` under a fresh temporary name in ``directory``."""
        h = digest.hasher()
        fd, tmp = create_temp(directory, ".tmp-")
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
            if h.hexdigest() != digest.hex:
                raise ImageError(f"pushing blob {digest} to {self.name}: {src} does not match its digest")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = Digest.from_bytes(data)
        try:
            final = self.blob_path(digest)
            if not _is_regular(final):
                self._write_atomic(final, data)
            if tag is not None:
                with self._lock:
                    self._tag(Descriptor(media_type=media_type, digest=digest, size=len(data),
                                         annotations={REF_NAME: tag}))
        except OSError as exc:
            raise ConverterError(f"writing manifest {digest} to {self.name}: {exc.strerror}") from exc
        return digest

    def _tag(self, entry: Descriptor) -> None:
        """Point ``tag`` at ``entry`` in index.json: other entries with that tag are replaced."""
        tag = entry.annotations[REF_NAME]
        index = self.read_index()
        kept = tuple(m for m in index.manifests if m.annotations.get(REF_NAME) != tag)
        new = Index(media_type=MediaType.OCI_INDEX, manifests=(*kept, entry), annotations=index.annotations,
                    extra=index.extra)
        self._write_atomic(self.root / INDEX_FILE, new.to_bytes())

    def tags(self) -> list[str]:
        """The tags in index.json, in order."""
        return [m.annotations[REF_NAME] for m in self.read_index().manifests if REF_NAME in m.annotations]

