"""Plans an uncompressed EROFS image from an Inode tree: NIDs, layouts and block addresses, no I/O.

This is the first of the writer's two passes (the second, ``writer.py``, serialises the plan).
The plan follows the data-first layout of spec §3: regular-file blocks already sit in blocks
1..D-1 (written by ``ImageDataArea`` while the tar streamed), the metadata area starts at block
D with ``meta_blkaddr = D - 1`` so the root inode gets NID ``blksz/32`` (128, never 0), and any
blocks that depend on the metadata (directory blocks, long symlinks, files whose tail could not
be inlined) are allocated after the metadata. Inodes are numbered breadth-first, root first,
each directory's children in dirent byte order (§3, §11 step 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.erofs import format as fmt
from converter.errors import ErofsFormatError
from converter.layers.model import Inode, NodeKind

#: Largest tail that could ever be inline: a compact inode with no xattrs fills the rest (§5.2).
MAX_INLINE_TAIL = fmt.BLOCK_SIZE - fmt.COMPACT_INODE_SIZE
#: §7.1 / Linux PATH_MAX: symlink targets are shorter than 4096 bytes.
MAX_SYMLINK_TARGET = 4095
_U32 = 1 << 32
_S64_MIN = -(1 << 63)
_S64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Where ``ImageDataArea`` put one file's contents (the writer's ``DataRef``).

    ``full_blocks`` whole blocks start at ``start_block`` (block 0 when there are none). The
    ``size % blksz`` tail bytes are either in the area's tail spool at ``tail_offset`` (to be
    inlined after the inode, §5.2) or, when ``tail_in_block`` is set because such a tail can
    never be inlined, zero-padded in the block right after the full blocks.
    """

    size: int
    start_block: int
    full_blocks: int
    tail_offset: int
    tail_len: int
    tail_in_block: bool
    area_token: int

    @property
    def tail_size(self) -> int:
        return self.size % fmt.BLOCK_SIZE


@dataclass(slots=True)
class PlannedInode:
    """One inode of the plan: what the serialiser writes, and where."""

    node: Inode
    name: bytes  # first name it was reached by (b"" for the root); for error messages
    parent: int  # index of the directory that owns ".." (the first one reached by)
    kind: NodeKind
    ino: int  # on-disk i_ino: 1, 2, 3, ... in inode order (§4.5)
    nlink: int = 1
    extended: bool = False
    st_mode: int = 0
    xattr_body: bytes = b""
    size: int = 0
    layout: int = fmt.LAYOUT_FLAT_PLAIN
    i_u: int = 0  # startblk, rdev or 0 (§4.4)
    inline_len: int = 0  # tail bytes stored after the inode and its xattrs (§5.2)
    offset: int = 0  # absolute byte offset of the inode in the image
    nid: int = 0
    entries: list[tuple[bytes, int]] | None = None  # dirs: sorted (name, inode index) incl. "." ".."
    block_counts: list[int] | None = None  # dirs: number of entries in each directory block
    extra_blocks: int = 0  # blocks allocated after the metadata area
    copy_blocks: bool = False  # REG fallback to FLAT_PLAIN: copy data blocks + padded tail
    ref: BlockRef | None = None  # REG with contents

    @property
    def inode_size(self) -> int:
        return fmt.EXTENDED_INODE_SIZE if self.extended else fmt.COMPACT_INODE_SIZE


@dataclass(frozen=True, slots=True)
class Plan:
    """The whole image: inodes in order, and the block geometry around them."""

    inodes: list[PlannedInode]
    meta_blkaddr: int
    meta_start_block: int  # D: first metadata block
    meta_end_block: int  # M: first block after the metadata area
    total_blocks: int
    build_time: int

    @property
    def root_nid(self) -> int:
        return self.inodes[0].nid


def path_of(inodes: list[PlannedInode], index: int) -> str:
    """The first path an inode was reached by, for error messages."""
    parts: list[bytes] = []
    seen = 0
    while index != 0 and seen <= len(inodes):
        parts.append(inodes[index].name)
        index = inodes[index].parent
        seen += 1
    return "/" + b"/".join(reversed(parts)).decode("utf-8", "backslashreplace")


def _name_problem(name: bytes) -> str | None:
    """Why ``name`` cannot be a dirent name (§6.2: 1..255 bytes, no '/' or NUL, not "." / ".."), or None."""
    if not isinstance(name, bytes):
        return "is not bytes"
    if not name or len(name) > fmt.MAX_NAME_LEN:
        return "must be 1..255 bytes long"
    if b"/" in name or b"\0" in name or name in (b".", b".."):
        return "is not allowed"
    return None


def collect(root: Inode) -> list[PlannedInode]:
    """Breadth-first inode order, hard links merged, nlink counted (§3, §4.5, §7.4).

    The root comes first; each directory's not-yet-seen children follow in dirent byte order.
    """
    if root.kind is not NodeKind.DIR or root.children is None:
        raise ErofsFormatError("the root of an EROFS image must be a directory")
    inodes = [PlannedInode(node=root, name=b"", parent=0, kind=NodeKind.DIR, ino=1)]
    index: dict[Inode, int] = {root: 0}
    i = 0
    while i < len(inodes):
        p = inodes[i]
        children = p.node.children
        if p.kind is NodeKind.DIR:
            if children is None:
                raise ErofsFormatError(f"directory {path_of(inodes, i)} has no children mapping")
            for name in children:
                problem = _name_problem(name)
                if problem:
                    raise ErofsFormatError(f"directory {path_of(inodes, i)}: entry name {name!r} {problem}")
            entries: list[tuple[bytes, int]] = [(b".", i), (b"..", p.parent)]
            subdirs = 0
            # §6.3: names sort by raw bytes; "." and ".." are merged in by the final sort.
            for name, child in sorted(children.items(), key=lambda item: item[0]):
                ci = index.get(child)
                if ci is None:
                    ci = len(inodes)
                    index[child] = ci
                    inodes.append(PlannedInode(node=child, name=name, parent=i, kind=child.kind, ino=ci + 1))
                elif child.kind is NodeKind.DIR:
                    # A directory reachable twice is a hard-linked directory or a cycle.
                    raise ErofsFormatError(
                        f"directory {path_of(inodes, ci)} also appears as {path_of(inodes, i)}/"
                        f"{name.decode('utf-8', 'backslashreplace')}: directories cannot be hard links"
                    )
                else:
                    inodes[ci].nlink += 1  # §7.4: one more dirent for the same inode
                if child.kind is NodeKind.DIR:
                    subdirs += 1
                entries.append((name, ci))
            entries.sort()
            p.entries = entries
            p.nlink = 2 + subdirs  # §4.5
        elif children is not None:
            raise ErofsFormatError(f"{path_of(inodes, i)} is not a directory but has children")
        i += 1
    return inodes


def _check_common(p: PlannedInode, build_time: int) -> None:
    node = p.node
    if not (0 <= node.uid < _U32 and 0 <= node.gid < _U32):
        raise ErofsFormatError(f"uid/gid {node.uid}/{node.gid} out of the 32-bit range")
    if not (_S64_MIN <= node.mtime_sec <= _S64_MAX and 0 <= node.mtime_nsec <= 999_999_999):
        raise ErofsFormatError(f"mtime {node.mtime_sec}.{node.mtime_nsec:09d} out of range")
    p.st_mode = node.st_mode
    # §4.6: compact only when every field fits and the mtime is exactly the build time.
    p.extended = not (
        node.uid <= 0xFFFF
        and node.gid <= 0xFFFF
        and p.nlink <= 0xFFFF
        and p.size < _U32
        and node.mtime_sec == build_time
        and node.mtime_nsec == 0
    )
    if p.nlink >= _U32:
        raise ErofsFormatError(f"{p.nlink} links do not fit in 32 bits")


def _shape(p: PlannedInode, area_token: int | None) -> None:
    """Size, layout candidate and i_u of one inode (§4.4, §5, §6.3, §7)."""
    node = p.node
    kind = p.kind
    if kind is NodeKind.REG:
        ref = node.data
        if node.size == 0:
            if ref is not None and ref.size != 0:
                raise ErofsFormatError(f"size 0 but its data holds {ref.size} bytes")
            p.size, p.layout, p.i_u = 0, fmt.LAYOUT_FLAT_PLAIN, 0  # §4.4: startblk 0 when empty
            return
        if not isinstance(ref, BlockRef) or (area_token is not None and ref.area_token != area_token):
            raise ErofsFormatError("contents were not stored in this image's data area")
        if ref.size != node.size:
            raise ErofsFormatError(f"size {node.size} but its data holds {ref.size} bytes")
        p.ref = ref
        p.size = node.size
        if ref.tail_size == 0 or ref.tail_in_block:
            p.layout, p.i_u = fmt.LAYOUT_FLAT_PLAIN, ref.start_block
        else:
            p.layout = fmt.LAYOUT_FLAT_INLINE
            p.inline_len = ref.tail_size
            p.i_u = ref.start_block if ref.full_blocks else fmt.NULL_ADDR
    elif kind is NodeKind.DIR:
        assert p.entries is not None
        names = [name for name, _ in p.entries]
        counts = fmt.dirent_block_sizes(names)
        p.block_counts = counts
        last = sum(fmt.DIRENT_SIZE + len(n) for n in names[len(names) - counts[-1]:])
        p.size = (len(counts) - 1) * fmt.BLOCK_SIZE + last
        if last == fmt.BLOCK_SIZE:  # §6.3: block-aligned directories are FLAT_PLAIN
            p.layout, p.extra_blocks = fmt.LAYOUT_FLAT_PLAIN, len(counts)
        else:
            p.layout, p.inline_len, p.extra_blocks = fmt.LAYOUT_FLAT_INLINE, last, len(counts) - 1
            p.i_u = 0 if p.extra_blocks else fmt.NULL_ADDR  # startblk filled in at allocation
    elif kind is NodeKind.LNK:
        target = node.target
        if not target or b"\0" in target or len(target) > MAX_SYMLINK_TARGET:
            raise ErofsFormatError(f"symlink target must be 1..{MAX_SYMLINK_TARGET} bytes without NUL")
        p.size = len(target)
        p.layout, p.inline_len, p.i_u = fmt.LAYOUT_FLAT_INLINE, len(target), fmt.NULL_ADDR  # §7.1
    elif kind in (NodeKind.CHR, NodeKind.BLK):
        p.i_u = fmt.encode_rdev(node.rdev_major, node.rdev_minor)  # §7.2
    elif kind in (NodeKind.FIFO, NodeKind.SOCK):
        p.i_u = 0  # §7.3
    else:  # pragma: no cover - NodeKind is closed
        raise ErofsFormatError(f"unknown inode kind {kind!r}")


def _fall_back_to_plain(p: PlannedInode) -> None:
    """§5.2: inode + xattrs + tail do not fit in one block: store the tail in a data block."""
    p.layout = fmt.LAYOUT_FLAT_PLAIN
    p.inline_len = 0
    if p.kind is NodeKind.REG:
        assert p.ref is not None
        p.copy_blocks = True
        p.extra_blocks = p.ref.full_blocks + 1
    elif p.kind is NodeKind.DIR:
        assert p.block_counts is not None
        p.extra_blocks = len(p.block_counts)
    else:  # symlink: one zero-padded block (§7.1)
        p.extra_blocks = 1


def plan_layout(root: Inode, *, data_end_block: int, build_time: int = 0,
                area_token: int | None = None) -> Plan:
    """Plan the image for ``root``; file data already occupies blocks 1..data_end_block-1.

    Raises ErofsFormatError (naming the path) for anything EROFS cannot represent.
    """
    if data_end_block < 1:
        raise ErofsFormatError("the data area must start at block 1 (block 0 holds the superblock)")
    blksz = fmt.BLOCK_SIZE
    inodes = collect(root)
    for i, p in enumerate(inodes):
        try:
            _shape(p, area_token)
            _check_common(p, build_time)
            p.xattr_body = fmt.encode_xattr_ibody(p.node.xattrs)
        except ErofsFormatError as exc:
            # Paths are built only on failure: cheap for 50,000 inodes (the planner keeps no paths).
            raise ErofsFormatError(f"{path_of(inodes, i)}: {exc}") from None

    # Offsets (§11 step 4). Metadata starts at block D; NIDs count from meta_blkaddr = D - 1.
    meta_blkaddr = data_end_block - 1
    base = meta_blkaddr * blksz
    pos = data_end_block * blksz
    for p in inodes:
        pos = fmt.align(pos, fmt.SLOT_SIZE)
        head = p.inode_size + len(p.xattr_body)
        in_block = pos % blksz
        if p.layout == fmt.LAYOUT_FLAT_INLINE:
            need = head + p.inline_len
            if need <= blksz:
                # §5.2 / §3 rule 2: inode, xattrs and tail all in one block. Keeping the tail in
                # the inode's block also avoids tails starting at a block boundary (§15).
                if in_block + need > blksz:
                    pos = fmt.align(pos, blksz)
            else:
                _fall_back_to_plain(p)
        if p.layout != fmt.LAYOUT_FLAT_INLINE and in_block and (
            head > blksz or in_block + head > blksz
        ):
            # §3 rule 3: keep inode (and xattrs, when they fit) inside one block.
            pos = fmt.align(pos, blksz)
        p.offset = pos
        p.nid = (pos - base) >> fmt.SLOT_BITS
        pos += head + p.inline_len
    meta_end_block = fmt.align(pos, blksz) // blksz

    # Blocks that depend on the metadata go after it, in inode order (§11 step 5).
    nxt = meta_end_block
    for p in inodes:
        if p.extra_blocks:
            p.i_u = nxt
            nxt += p.extra_blocks
    if nxt >= fmt.MAX_BLOCKS:
        raise ErofsFormatError(f"the image needs {nxt} blocks; 32-bit block addresses allow {fmt.MAX_BLOCKS - 1}")
    return Plan(
        inodes=inodes, meta_blkaddr=meta_blkaddr, meta_start_block=data_end_block,
        meta_end_block=meta_end_block, total_blocks=nxt, build_time=build_time,
    )
