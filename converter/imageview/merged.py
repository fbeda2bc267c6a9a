"""The layers of an image merged as overlayfs merges them: the view a container gets.

Layers are EROFS images, bottom first. Overlay rules (kernel Documentation/filesystems/
overlayfs.rst; EROFS OCI layer spec (draft) §3.6): the top-most layer holding a path decides
what it is; a 0/0 character device is a whiteout hiding the path below; a directory with
``trusted.overlay.opaque=y`` hides what lower layers hold under it; a non-directory hides
everything below its path. Directory listings merge every layer down to the first opaque or
non-directory one. Lookups follow no symlinks (lstat); ``resolve`` follows them inside the
image, never outside it (``..`` stops at the root, absolute targets start at the image root).
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Iterator, Sequence

from converter.erofs.reader import ErofsImage, Stat
from converter.errors import ConverterError

OPAQUE_XATTR = "trusted.overlay.opaque"
MAX_SYMLINKS = 40  # Linux's limit on links followed in one path walk


class _In(enum.Enum):
    """What one layer holds at a path."""

    ABSENT = "absent"  # nothing, lower layers decide
    HIDDEN = "hidden"  # a whiteout, or an ancestor hides lower layers: nothing below counts
    FOUND = "found"


def _is_whiteout(st: Stat) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.rdev_major == 0 and st.rdev_minor == 0


def _raw_split(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c and c != b"."]


def _split(path: bytes) -> list[bytes]:
    """Components of ``path`` with ``..`` applied lexically (never above the root)."""
    out: list[bytes] = []
    for comp in _raw_split(path):
        if comp == b"..":
            if out:
                out.pop()
        else:
            out.append(comp)
    return out


def _join(comps: Sequence[bytes]) -> bytes:
    return b"/" + b"/".join(comps)


class MergedView:
    """Overlay of ``layers`` (bottom first)."""

    def __init__(self, layers: Sequence[ErofsImage]) -> None:
        if not layers:
            raise ConverterError("reading the image: it has no layers")
        self.layers = list(layers)

    def _opaque(self, img: ErofsImage, path: bytes) -> bool:
        return img.xattrs(path).get(OPAQUE_XATTR) == b"y"

    def _in(self, img: ErofsImage, comps: Sequence[bytes]) -> tuple[_In, Stat | None, bool]:
        """(state, stat, an ancestor or the path itself is an opaque directory here)."""
        opaque = False
        for j in range(len(comps) + 1):
            path = _join(comps[:j])
            try:
                st = img.stat(path)
            except FileNotFoundError:
                return (_In.HIDDEN if opaque else _In.ABSENT), None, opaque
            if _is_whiteout(st):
                return _In.HIDDEN, None, opaque
            if j == len(comps):
                return _In.FOUND, st, opaque or (st.is_dir and self._opaque(img, path))
            if not st.is_dir:
                return _In.HIDDEN, None, opaque
            opaque = opaque or self._opaque(img, path)
        raise AssertionError("unreachable")

    def lookup(self, path: bytes) -> tuple[ErofsImage, bytes, Stat] | None:
        """The layer image, normalised path and lstat of ``path`` in the merged view, or None."""
        comps = _split(path)
        for img in reversed(self.layers):
            state, st, _ = self._in(img, comps)
            if state is _In.FOUND:
                assert st is not None
                return img, _join(comps), st
            if state is _In.HIDDEN:
                return None
        return None

    def listdir(self, path: bytes) -> list[tuple[bytes, ErofsImage, Stat]]:
        """The merged entries of directory ``path``: (name, layer image, lstat), sorted by name."""
        comps = _split(path)
        seen: dict[bytes, tuple[ErofsImage, Stat] | None] = {}
        for img in reversed(self.layers):
            state, st, opaque = self._in(img, comps)
            if state is _In.HIDDEN:
                break
            if state is _In.ABSENT:
                continue
            assert st is not None
            if not st.is_dir:
                break
            base = _join(comps)
            for entry in img.listdir(base):
                if entry.name in seen:
                    continue
                child = img.stat(base.rstrip(b"/") + b"/" + entry.name)
                seen[entry.name] = None if _is_whiteout(child) else (img, child)
            if opaque:
                break
        return sorted((name, found[0], found[1]) for name, found in seen.items() if found is not None)

    def walk(self, path: bytes = b"/") -> Iterator[tuple[bytes, ErofsImage, Stat]]:
        """``path`` and everything under it, depth first in name order: (path, layer image, lstat)."""
        found = self.lookup(path)
        if found is None:
            raise FileNotFoundError(2, "no such file or directory in the image", path.decode("utf-8", "replace"))
        img, norm, st = found
        yield norm, img, st
        if not st.is_dir:
            return
        stack = [(norm, iter(self.listdir(norm)))]
        while stack:
            base, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            name, child_img, child = item
            child_path = base.rstrip(b"/") + b"/" + name
            yield child_path, child_img, child
            if child.is_dir:
                stack.append((child_path, iter(self.listdir(child_path))))

    def resolve(self, path: bytes) -> tuple[ErofsImage, bytes, Stat]:
        """Follow symlinks in every component of ``path`` (inside the image) to what it names."""
        pending = _raw_split(path)
        done: list[bytes] = []
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp == b"..":
                if done:
                    done.pop()
                continue
            found = self.lookup(_join([*done, comp]))
            if found is None:
                raise FileNotFoundError(2, "no such file or directory in the image",
                                        _join([*done, comp]).decode("utf-8", "replace"))
            img, norm, st = found
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise OSError(40, "too many levels of symbolic links", path.decode("utf-8", "replace"))
                target = img.readlink(norm)
                if target.startswith(b"/"):
                    done = []
                pending = _raw_split(target) + pending
                continue
            if pending and not st.is_dir:
                raise NotADirectoryError(20, "not a directory", norm.decode("utf-8", "replace"))
            done.append(comp)
        found = self.lookup(_join(done))
        assert found is not None
        return found
