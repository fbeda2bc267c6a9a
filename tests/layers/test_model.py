"""The model's classes behave the same compiled (converter/native.py) and from source."""

from __future__ import annotations

import pickle

from converter.layers.model import DirMeta, EntryKind, Inode, NodeKind, TarEntry


def test_dir_meta_survives_pickling_as_the_build_process_sends_it() -> None:
    meta = DirMeta(0o755, 1, 2, 3, 4, (("user.a", b"b"),))
    again = pickle.loads(pickle.dumps(meta))
    assert again == meta
    assert again is not meta


def test_written_out_initialisers_keep_the_dataclass_defaults_and_equality() -> None:
    a = TarEntry(b"x", EntryKind.REG, 0o644, 0, 0, 1, 2)
    b = TarEntry(b"x", EntryKind.REG, 0o644, 0, 0, 1, 2)
    assert a == b
    assert (a.size, a.linkname, a.devmajor, a.devminor, a.xattrs) == (0, b"", 0, 0, {})
    a.xattrs["user.k"] = b"v"
    assert b.xattrs == {}  # each entry has its own dict
    assert a != b
    node = Inode(NodeKind.DIR, 0o755, children={})
    other = Inode(NodeKind.DIR, 0o755, children={})
    assert node != other  # identity, as hard links need
    assert (node.xattrs, node.data, node.target, node.st_mode) == ({}, None, b"", 0o40755)
