"""Plans an uncompressed EROFS image from an Inode tree: NIDs, layouts and block addresses, no I/O.

This is the first of the writer's two passes (the second, ``writer.py``, serialises the plan).
The plan follows the data-first layout of docs/erofs-format.md §3: regular-file blocks already sit in blocks
1..D-1 (written by ``ImageDataArea`` while the tar streamed), the metadata area starts at block
D with ``meta_blkaddr = D - 1`` so the root inode gets NID ``blksz/32`` (128, never 0), and any
blocks that depend on the metadata (directory blocks, long symlinks, files whose tail could not
be inlined) are allocated after the metadata.

Planning runs in three steps, because directory contents hold child NIDs but directory sizes
do not depend on NID values (§11 step 4):

1. ``_collect``: inodes breadth-first, root first, each directory's children in dirent byte
   order (§3, §11 step 3). This order numbers the inodes (``i_ino`` = index + 1) and is the
   order in which they are placed.
2. Shaping: size, layout (inline tail or not), ``i_u`` and the xattr body of every inode.
3. Placement: each inode with its xattrs and inline tail goes into a metadata block by best
   fit (``MetaBlockAllocator``), as mkfs does (§15). NIDs follow from the offsets, so inodes no
   longer appear in increasing NID order; EROFS does not care (§3: NIDs are just offsets).

The plan is a set of parallel columns indexed by inode index rather than one object per
inode: a small-files layer has tens of thousands of inodes, and allocating an object for each
(and the garbage collector walking them all, repeatedly, while they are built) cost about as
much as all the rest of the planning. Lists of ints are compact and invisible to the GC.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass

from converter.erofs import format as fmt
from converter.erofs.zindex import compact_meta_size
from converter.errors import ErofsFormatError
from converter.layers.model import Inode, NodeKind

#: Largest tail that could ever be inline: a compact inode with no xattrs fills the rest (§5.2).
MAX_INLINE_TAIL = fmt.BLOCK_SIZE - fmt.COMPACT_INODE_SIZE
#: §7.1 / Linux PATH_MAX: symlink targets are shorter than 4096 bytes.
MAX_SYMLINK_TARGET = 4095
#: 32-byte inode slots in one metadata block (§3).
SLOTS_PER_BLOCK = fmt.BLOCK_SIZE >> fmt.SLOT_BITS
_U32 = 1 << 32
_S64_MIN = -(1 << 63)
_S64_MAX = (1 << 63) - 1


@dataclass(slots=True, init=False)  # not frozen: a frozen dataclass's __init__ costs 3 times more, once per file
class BlockRef:
    """Where ``ImageDataArea`` put one file's contents (the writer's ``DataRef``); never changed
    once made (hard links share one).

    ``full_blocks`` whole blocks start at ``start_block`` (block 0 when there are none). The
    ``size % blksz`` tail bytes are either in the area's tail store at ``tail_offset`` (to be
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
    #: A compressed file (zwriter.py): its layout (COMPRESSED_FULL) and pcluster block count
    #: (its ``i_u``); the tail store then holds its map header and indexes, not a data tail.
    z_layout: int
    z_blocks: int
    #: ztailpacking: the inline pcluster's size, at the end of the tail store's bytes
    z_inline: int

    # Written out (init=False), with the defaults: compiled (native.py), this __init__ is C;
    # dataclasses' generated one would stay interpreted.
    def __init__(self, size: int, start_block: int, full_blocks: int, tail_offset: int, tail_len: int,
                 tail_in_block: bool, area_token: int, z_layout: int = 0, z_blocks: int = 0,
                 z_inline: int = 0) -> None:
        self.size = size
        self.start_block = start_block
        self.full_blocks = full_blocks
        self.tail_offset = tail_offset
        self.tail_len = tail_len
        self.tail_in_block = tail_in_block
        self.area_token = area_token
        self.z_layout = z_layout
        self.z_blocks = z_blocks
        self.z_inline = z_inline

    @property
    def tail_size(self) -> int:
        return self.size % fmt.BLOCK_SIZE


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where ``ImageDataArea`` put a file with holes: a CHUNK_BASED file (kernel
    Documentation/filesystems/erofs.rst, "chunk-based files"; ``fs/erofs/erofs_fs.h``
    ``EROFS_INODE_CHUNK_BASED``). ``block_map`` is the inode's 4-byte block map: for each
    ``blksz << chunkbits``-byte chunk the start block of its consecutive data blocks, or
    ``NULL_ADDR`` for a chunk that is all hole (a null chunk: reads as zeros, stores nothing)."""

    size: int
    chunkbits: int  # log2(chunk size / block size): the low bits of the chunk format
    block_map: bytes
    area_token: int

    @property
    def chunk_format(self) -> int:
        """``i_u``'s low u16: the 4-byte block map (no INDEXES bit) with this chunk size."""
        return self.chunkbits


@dataclass(frozen=True, slots=True)
class Plan:
    """The planned image. Every list is indexed by inode index (``i_ino - 1``, breadth-first).

    Directory entries of all directories are stored back to back in ``entry_names`` /
    ``entry_targets`` (sorted within each directory, "." and ".." included, §6.3); ``dirs``
    says where each directory's run starts and how many entries each of its blocks holds.
    """

    nodes: list[Inode]
    names: list[bytes]  # the first name each inode was reached by (b"" for the root)
    parents: list[int]  # the directory that owns ".." (the first one the inode was reached by)
    nlink: list[int]
    extended: list[bool]
    size: list[int]
    layout: list[int]
    i_u: list[int]  # startblk, rdev or 0 (§4.4)
    inline_len: list[int]  # tail bytes stored right after the inode and its xattrs (§5.2)
    xattr_body: list[bytes]
    offset: list[int]  # absolute byte offset of the inode in the image
    nid: list[int]
    dirs: dict[int, tuple[int, tuple[int, ...]]]  # dir index -> (first entry, entries per dir block)
    entry_names: list[bytes]
    entry_targets: list[int]  # inode index each entry points to
    chunked: bool  # some file is CHUNK_BASED: the image needs INCOMPAT_CHUNKED_FILE (5.15+)
    #: inode index -> blocks allocated for it after the metadata area, in index order; its
    #: ``i_u`` is the first. Regular files here fell back to FLAT_PLAIN and get a copy of their
    #: data blocks plus the zero-padded tail.
    extra_blocks: dict[int, int]
    order: list[int]  # inode indexes by increasing offset: the order they are written in
    meta_blkaddr: int
    meta_start_block: int  # D: first metadata block
    meta_end_block: int  # M: first block after the metadata area
    total_blocks: int
    build_time: int

    @property
    def root_nid(self) -> int:
        return self.nid[0]

    @property
    def inode_count(self) -> int:
        return len(self.nodes)

    def path_of(self, index: int) -> str:
        """The first path inode ``index`` was reached by, for error messages."""
        return _path_of(self.names, self.parents, index)

    def dir_entries(self, index: int, block: int) -> tuple[list[bytes], list[int]]:
        """Names and target inode indexes in directory block ``block`` of directory ``index``."""
        first, counts = self.dirs[index]
        start = first + sum(counts[:block])
        stop = start + counts[block]
        return self.entry_names[start:stop], self.entry_targets[start:stop]


class MetaBlockAllocator:
    """Best-fit placement of metadata items (inode + xattrs + inline tail) in 32-byte slots.

    Why: a sequential writer pads to the next block whenever an inode plus its inline tail does
    not fit in the rest of the current block. With many small files (tails of any length up to
    4 KiB) that wasted about 13% of the image, where mkfs fills such gaps with later inodes
    (§15: best fit among partially filled metadata blocks).

    Every block that still has free slots stays *open*, filed in a bucket by its number of free
    slots (1..127). An item of ``size`` bytes needs ``ceil(size/32)`` slots and goes into the
    open block with the fewest free slots that still hold it (lowest block number on a tie),
    else at the start of a new block. It always starts at the block's first free slot, so it is
    32-byte aligned (§3 rule 1) and lies wholly inside that block: no inline tail crosses a
    block (§3 rule 2, §5.2), no compact inode crosses a block (§3 rule 3), and no tail starts
    at a block boundary (§15). Only items larger than a block (huge xattr bodies without an
    inline tail) span blocks: they start in fresh blocks and their last block stays open.

    A bit mask of non-empty buckets finds the best bucket with two integer operations and each
    bucket is a heap of block numbers, so a placement costs O(log n) and the result depends
    only on the sequence of sizes asked for (same tree, same bytes).
    """

    __slots__ = ("_buckets", "_mask", "_next")

    def __init__(self, first_block: int) -> None:
        self._next = first_block  # the first block no item has touched yet
        self._buckets: list[list[int]] = [[] for _ in range(SLOTS_PER_BLOCK)]
        self._mask = 0  # bit s is set iff bucket s (blocks with s free slots) is non-empty

    @property
    def end_block(self) -> int:
        """First block after every block used so far (the end of the metadata area)."""
        return self._next

    def open_blocks(self) -> dict[int, int]:
        """Open block -> its free bytes (for tests and statistics)."""
        return {blk: free << fmt.SLOT_BITS for free, heap in enumerate(self._buckets) for blk in heap}

    def place(self, size: int) -> int:
        """Reserve ``size`` (> 0) bytes; return the absolute byte offset where they start."""
        if size <= 0:
            raise ValueError(f"metadata items have a positive size, not {size}")
        slots = (size + fmt.SLOT_SIZE - 1) >> fmt.SLOT_BITS
        if slots < SLOTS_PER_BLOCK:
            fits = self._mask >> slots
            if fits:
                free = slots + (fits & -fits).bit_length() - 1  # the smallest bucket that fits
                heap = self._buckets[free]
                block = heapq.heappop(heap)
                if not heap:
                    self._mask &= ~(1 << free)
                offset = (block << fmt.BLOCK_SIZE_BITS) + ((SLOTS_PER_BLOCK - free) << fmt.SLOT_BITS)
                self._reopen(block, free - slots)
                return offset
        block = self._next
        full, rest = divmod(slots, SLOTS_PER_BLOCK)
        self._next += full + (1 if rest else 0)
        if rest:
            self._reopen(block + full, SLOTS_PER_BLOCK - rest)
        return block << fmt.BLOCK_SIZE_BITS

    def _reopen(self, block: int, free: int) -> None:
        if free:
            heapq.heappush(self._buckets[free], block)
            self._mask |= 1 << free


def _path_of(names: list[bytes], parents: list[int], index: int) -> str:
    parts: list[bytes] = []
    seen = 0
    while index != 0 and seen <= len(names):
        parts.append(names[index])
        index = parents[index]
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


@dataclass(slots=True)
class _Tree:
    """What ``_collect`` finds: the first columns of the plan."""

    nodes: list[Inode]
    names: list[bytes]
    parents: list[int]
    nlink: list[int]
    dir_spans: dict[int, tuple[int, int]]  # dir index -> its entries' [start, stop) in entry_names
    entry_names: list[bytes]
    entry_targets: list[int]


def _collect(root: Inode) -> _Tree:
    """Breadth-first inode order, hard links merged, nlink counted (§3, §4.5, §7.4).

    The root comes first; each directory's not-yet-seen children follow in dirent byte order.
    Each directory's names are sorted once; "." and ".." are merged in by bisection (§6.3:
    they sort like any other name, e.g. after b"-x" and before b".a").
    """
    if root.kind is not NodeKind.DIR or root.children is None:
        raise ErofsFormatError("the root of an EROFS image must be a directory")
    nodes = [root]
    names = [b""]
    parents = [0]
    nlink = [1]
    dir_spans: dict[int, tuple[int, int]] = {}
    entry_names: list[bytes] = []
    entry_targets: list[int] = []
    index: dict[Inode, int] = {root: 0}
    max_len = fmt.MAX_NAME_LEN
    dir_kind = NodeKind.DIR
    i = 0
    while i < len(nodes):
        children = nodes[i].children
        if nodes[i].kind is dir_kind:
            if children is None:
                raise ErofsFormatError(f"directory {_path_of(names, parents, i)} has no children mapping")
            # All names valid, checked in C a directory at a time; the loop only finds the culprit.
            if children and not (set(map(type, children)) == {bytes} and b"." not in children
                                 and b".." not in children and min(map(len, children)) > 0
                                 and max(map(len, children)) <= max_len
                                 and b"/" not in (joined := b"\0".join(children))
                                 and joined.count(0) == len(children) - 1):
                for name in children:
                    if (type(name) is not bytes or not 0 < len(name) <= max_len or b"/" in name
                            or b"\0" in name or name == b"." or name == b".."):
                        problem = _name_problem(name) or "is not allowed"  # the helper only words it
                        raise ErofsFormatError(
                            f"directory {_path_of(names, parents, i)}: entry name {name!r} {problem}")
            sorted_names = sorted(children)
            targets: list[int] = []
            subdirs = 0
            for name in sorted_names:
                child = children[name]
                ci = index.get(child)
                if ci is None:
                    ci = len(nodes)
                    index[child] = ci
                    nodes.append(child)
                    names.append(name)
                    parents.append(i)
                    nlink.append(1)
                elif child.kind is dir_kind:
                    # A directory reachable twice is a hard-linked directory or a cycle.
                    raise ErofsFormatError(
                        f"directory {_path_of(names, parents, ci)} also appears as "
                        f"{_path_of(names, parents, i)}/{name.decode('utf-8', 'backslashreplace')}: "
                        "directories cannot be hard links"
                    )
                else:
                    nlink[ci] += 1  # §7.4: one more dirent for the same inode
                if child.kind is dir_kind:
                    subdirs += 1
                targets.append(ci)
            for special, target in ((b".", i), (b"..", parents[i])):
                at = bisect_left(sorted_names, special)
                sorted_names.insert(at, special)
                targets.insert(at, target)
            dir_spans[i] = (len(entry_names), len(entry_names) + len(sorted_names))
            entry_names += sorted_names
            entry_targets += targets
            nlink[i] = 2 + subdirs  # §4.5
        elif children is not None:
            raise ErofsFormatError(f"{_path_of(names, parents, i)} is not a directory but has children")
        i += 1
    return _Tree(nodes, names, parents, nlink, dir_spans, entry_names, entry_targets)


def _shape_file(node: Inode, kind: NodeKind, area_token: int | None) -> tuple[int, int, int, int]:
    """(size, layout, i_u, inline_len) of a non-directory (§4.4, §5, §7)."""
    if kind is NodeKind.REG:
        ref = node.data
        size = node.size
        if size == 0:
            if ref is not None and ref.size != 0:
                raise ErofsFormatError(f"size 0 but its data holds {ref.size} bytes")
            return 0, fmt.LAYOUT_FLAT_PLAIN, 0, 0  # §4.4: startblk 0 when empty
        if isinstance(ref, ChunkRef):
            if area_token is not None and ref.area_token != area_token:
                raise ErofsFormatError("contents were not stored in this image's data area")
            if ref.size != size:
                raise ErofsFormatError(f"size {size} but its data holds {ref.size} bytes")
            # The block map follows the inode and its xattrs, 4-byte aligned (always true here:
            # inodes are 32-byte aligned and xattr bodies a multiple of 4 bytes).
            return size, fmt.LAYOUT_CHUNK_BASED, ref.chunk_format, len(ref.block_map)
        if not isinstance(ref, BlockRef) or (area_token is not None and ref.area_token != area_token):
            raise ErofsFormatError("contents were not stored in this image's data area")
        if ref.size != size:
            raise ErofsFormatError(f"size {size} but its data holds {ref.size} bytes")
        if ref.z_layout:  # §5.4: map header and indexes follow the inode like an inline tail
            return size, ref.z_layout, ref.z_blocks, ref.tail_len
        if ref.tail_len == 0:  # no tail, or one that sits zero-padded in a data block
            return size, fmt.LAYOUT_FLAT_PLAIN, ref.start_block, 0
        return size, fmt.LAYOUT_FLAT_INLINE, ref.start_block if ref.full_blocks else fmt.NULL_ADDR, ref.tail_len
    if kind is NodeKind.LNK:
        target = node.target
        if not target or b"\0" in target or len(target) > MAX_SYMLINK_TARGET:
            raise ErofsFormatError(f"symlink target must be 1..{MAX_SYMLINK_TARGET} bytes without NUL")
        return len(target), fmt.LAYOUT_FLAT_INLINE, fmt.NULL_ADDR, len(target)  # §7.1
    if kind is NodeKind.CHR or kind is NodeKind.BLK:
        return 0, fmt.LAYOUT_FLAT_PLAIN, fmt.encode_rdev(node.rdev_major, node.rdev_minor), 0  # §7.2
    if kind is NodeKind.FIFO or kind is NodeKind.SOCK:
        return 0, fmt.LAYOUT_FLAT_PLAIN, 0, 0  # §7.3
    raise ErofsFormatError(f"unknown inode kind {kind!r}")  # pragma: no cover - NodeKind is closed


def _is_extended(node: Inode, nlink: int, size: int, build_time: int) -> bool:
    """§4.6: compact only when every field fits and the mtime is exactly the build time."""
    uid, gid, mtime, nsec = node.uid, node.gid, node.mtime_sec, node.mtime_nsec
    if not (0 <= uid < _U32 and 0 <= gid < _U32):
        raise ErofsFormatError(f"uid/gid {uid}/{gid} out of the 32-bit range")
    if not (_S64_MIN <= mtime <= _S64_MAX and 0 <= nsec <= 999_999_999):
        raise ErofsFormatError(f"mtime {mtime}.{nsec:09d} out of range")
    if nlink >= _U32:
        raise ErofsFormatError(f"{nlink} links do not fit in 32 bits")
    return not (uid <= 0xFFFF and gid <= 0xFFFF and nlink <= 0xFFFF and size < _U32
                and mtime == build_time and nsec == 0)


def plan_layout(root: Inode, *, data_end_block: int, build_time: int = 0,
                area_token: int | None = None) -> Plan:
    """Plan the image for ``root``; file data already occupies blocks 1..data_end_block-1.

    Raises ErofsFormatError (naming the path) for anything EROFS cannot represent.
    """
    if data_end_block < 1:
        raise ErofsFormatError("the data area must start at block 1 (block 0 holds the superblock)")
    blksz = fmt.BLOCK_SIZE
    plain, inline = fmt.LAYOUT_FLAT_PLAIN, fmt.LAYOUT_FLAT_INLINE
    tree = _collect(root)
    nodes = tree.nodes
    n = len(nodes)
    size_col = [0] * n
    layout_col = [plain] * n
    i_u_col = [0] * n
    inline_col = [0] * n
    extended_col = [False] * n
    xattr_col = [b""] * n
    offset_col = [0] * n
    nid_col = [0] * n
    dirs: dict[int, tuple[int, tuple[int, ...]]] = {}
    extra_blocks: dict[int, int] = {}

    # Root first, so it opens block D: NID (D*blksz - base)/32 = 128, never 0 and within the
    # 16-bit root_nid field (§3). NIDs count from meta_blkaddr = D - 1.
    meta_blkaddr = data_end_block - 1
    base = meta_blkaddr * blksz
    allocator = MetaBlockAllocator(data_end_block)
    place = allocator.place
    dir_kind, reg_kind = NodeKind.DIR, NodeKind.REG
    chunk_layout = fmt.LAYOUT_CHUNK_BASED
    chunked = False
    nlink = tree.nlink
    entry_names = tree.entry_names
    for i in range(n):
        node = nodes[i]
        kind = node.kind
        extra = 0
        inline_pcluster = 0  # ztailpacking: the compressed tail that must not cross a block
        try:
            if kind is dir_kind:
                first, stop = tree.dir_spans[i]
                counts_list, last = fmt.dirent_blocks(entry_names[first:stop])
                counts = tuple(counts_list)
                dirs[i] = (first, counts)
                size = (len(counts) - 1) * blksz + last
                if last == blksz:  # §6.3: block-aligned directories are FLAT_PLAIN
                    layout, i_u, tail, extra = plain, 0, 0, len(counts)
                else:
                    layout, tail, extra = inline, last, len(counts) - 1
                    i_u = 0 if extra else fmt.NULL_ADDR  # startblk filled in at allocation
            else:
                size, layout, i_u, tail = _shape_file(node, kind, area_token)
            extended = _is_extended(node, nlink[i], size, build_time)
            xattr_body = fmt.encode_xattr_ibody(node.xattrs) if node.xattrs else b""
        except ErofsFormatError as exc:
            # Paths are built only on failure: cheap for 50,000 inodes (the planner keeps no paths).
            raise ErofsFormatError(f"{_path_of(tree.names, tree.parents, i)}: {exc}") from None

        # Placement (§11 step 4): inode, xattrs and inline tail as one item in one block.
        need = (fmt.EXTENDED_INODE_SIZE if extended else fmt.COMPACT_INODE_SIZE) + len(xattr_body)
        if tail and layout in fmt.COMPRESSED_LAYOUTS:
            # §5.4.1: the map header is 8-byte aligned; index entries may cross blocks.
            pad = -len(xattr_body) % 8
            ref = node.data
            assert isinstance(ref, BlockRef)
            inline_pcluster = ref.z_inline
            if layout == fmt.LAYOUT_COMPRESSED_COMPACT:
                # §5.4.3: the packs' size depends on where they start modulo 32; inodes are
                # 32-byte aligned and 32 or 64 bytes long, so that is known here.
                tail = compact_meta_size(size, len(xattr_body) + pad + fmt.Z_MAP_HEADER_SIZE) + inline_pcluster
            tail += pad
            need += tail
        elif layout == chunk_layout:
            need += tail  # the block map may span metadata blocks (the kernel reads it by offset)
            chunked = True
        elif tail:
            if need + tail <= blksz:
                need += tail  # §5.2 / §3 rule 2: place() keeps items of up to a block in one block
            else:
                # §5.2: inode + xattrs + tail do not fit even in an empty block: FLAT_PLAIN,
                # the tail goes to a (zero-padded) block after the metadata.
                layout, tail = plain, 0
                if kind is reg_kind:
                    ref = node.data
                    assert isinstance(ref, BlockRef)
                    extra = ref.full_blocks + 1  # data blocks are copied next to the tail
                elif kind is dir_kind:
                    extra = len(dirs[i][1])
                else:  # symlink: one zero-padded block (§7.1)
                    extra = 1
        if inline_pcluster and need > blksz:
            # §5.4.4: the inline pcluster (the item's last bytes) must not cross a block. An item
            # of a block or less stays inside one; a longer one starts a block, so slide its
            # inode forward by 32-byte slots until the inline pcluster fits.
            shift = 0
            while (shift + need - inline_pcluster) // blksz != (shift + need - 1) // blksz:
                shift += fmt.SLOT_SIZE
            off = place(shift + need) + shift
        else:
            off = place(need)
        size_col[i] = size
        layout_col[i] = layout
        i_u_col[i] = i_u
        inline_col[i] = tail
        extended_col[i] = extended
        xattr_col[i] = xattr_body
        offset_col[i] = off
        nid_col[i] = (off - base) >> fmt.SLOT_BITS
        if extra:
            extra_blocks[i] = extra
    meta_end_block = allocator.end_block
    order = sorted(range(n), key=offset_col.__getitem__)

    # Blocks that depend on the metadata go after it, in inode order (§11 step 5).
    nxt = meta_end_block
    for i, count in extra_blocks.items():
        i_u_col[i] = nxt
        nxt += count
    if nxt >= fmt.MAX_BLOCKS:
        raise ErofsFormatError(f"the image needs {nxt} blocks; 32-bit block addresses allow {fmt.MAX_BLOCKS - 1}")
    return Plan(
        nodes=nodes, names=tree.names, parents=tree.parents, nlink=nlink, extended=extended_col,
        size=size_col, layout=layout_col, i_u=i_u_col, inline_len=inline_col, xattr_body=xattr_col,
        offset=offset_col, nid=nid_col, dirs=dirs, entry_names=entry_names, entry_targets=tree.entry_targets,
        chunked=chunked, extra_blocks=extra_blocks, order=order, meta_blkaddr=meta_blkaddr,
        meta_start_block=data_end_block,
        meta_end_block=meta_end_block, total_blocks=nxt, build_time=build_time,
    )
