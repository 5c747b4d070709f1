"""NSD's ``/betas`` as it is published: one HDF5 chunk per voxel, read in file order.

NSD's export (cvnlab/nsddatapaper ``main/export.m``) writes each session with
``h5create(file0,'/betas',size(betas),'Datatype','int16','ChunkSize',[1 1 1 750])``
and no ``Deflate``: h5py sees ``(750, K, J, I)`` int16 with chunks ``(750, 1, 1, 1)``,
unfiltered. A session is ~700k chunks of 1,500 bytes (one voxel's 750 trials each),
indexed by a version-1 B-tree whose nodes sit between the chunks.

Reading such a file through h5py slab by slab touches every chunk once per slab;
asking HDF5 for each chunk's address is worse (``H5Dget_chunk_info`` by index walks
the index from the start: quadratic). Instead:

1. :func:`chunk_addresses` walks the B-tree once, node by node, with numpy
   (:func:`_btree_v1_chunks`; any other index layout falls back to h5py's
   ``chunk_iter``), giving each voxel's chunk address.
2. :func:`read_chunked_voxels` reads the kept voxels in file order: consecutive
   chunks of kept voxels form runs, and each run is one ``preadv`` straight into
   the rows of a voxel-major buffer (``(n_voxels, 750)`` int16) -- no mapping of the
   file (resident memory stays the buffer), no per-chunk HDF5 call.

The caller transposes the buffer's voxel blocks into Zarr chunks
(:func:`brainpipe.datasets.nsd.ingest_session`).
"""

from __future__ import annotations

import bisect
import heapq
import mmap
import os
import struct
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: ``preadv`` takes at most this many buffers at once (IOV_MAX on Linux).
IOV_MAX = 1024
#: Bytes of the stream :class:`StreamedChunks` keeps at least (it holds up to twice this,
#: by reference).
STREAM_WINDOW = 64 << 20


def _read(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read at {offset} ({len(data)} of {size} bytes)")
    return data


def _layout_btree_address(
    read: Callable[[int, int], bytes], header: int, base: int
) -> tuple[int, int] | None:
    """(B-tree address, dimensionality) from a version-1 object header's layout message.

    None when the header or the layout message is another version (the caller then
    asks h5py). Format: HDF5 File Format Specification, "Version 1 Data Object Header
    Prefix", "Data Layout Message" (version 3, class 2 = chunked).
    """
    prefix = read(base + header, 16)
    if prefix[0] != 1:
        return None  # version 2 headers start with "OHDR"
    n_messages = struct.unpack_from("<H", prefix, 2)[0]
    blocks = [(base + header + 16, struct.unpack_from("<I", prefix, 8)[0])]
    seen = 0
    while blocks and seen < n_messages:
        start, size = blocks.pop(0)
        data = read(start, size)
        pos = 0
        while pos + 8 <= size and seen < n_messages:
            mtype, msize = struct.unpack_from("<HH", data, pos)
            body = data[pos + 8 : pos + 8 + msize]
            seen += 1
            if mtype == 0x0010:  # continuation: more messages elsewhere
                addr, length = struct.unpack_from("<QQ", body, 0)
                blocks.append((base + addr, length))
            elif mtype == 0x0008:
                if body[0] != 3 or body[1] != 2:
                    return None
                dims = body[2]
                return struct.unpack_from("<Q", body, 3)[0], dims
            pos += 8 + msize
    return None


def _btree_v1_chunks(
    fd: int, root: int, dims: int, base: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every chunk of a version-1 chunk B-tree: (offsets (n, dims-1), address, size, mask).

    Walks level by level; each node's keys and children are decoded with one numpy
    view. Format: HDF5 File Format Specification, "Version 1 B-trees" (node type 1:
    key = chunk size uint32, filter mask uint32, ``dims`` uint64 offsets; child =
    address uint64).
    """
    key = np.dtype([("size", "<u4"), ("mask", "<u4"), ("offset", "<u8", (dims,)), ("child", "<u8")])
    # the nodes are read through a map of the file: ~10k small reads without a system
    # call each (resident: the nodes' pages only, a few % of the file; unmapped after)
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        table = _walk_nodes(np.frombuffer(mapped, np.uint8), root, key, base)
    if table is None:
        empty = np.empty(0, np.int64)
        return np.empty((0, dims - 1), np.int64), empty, empty, empty
    entries = table
    return (
        entries["offset"][:, :-1].astype(np.int64),
        entries["child"].astype(np.int64) + base,
        entries["size"].astype(np.int64),
        entries["mask"].astype(np.int64),
    )


def _walk_nodes(raw: np.ndarray, root: int, key: np.dtype, base: int) -> np.ndarray | None:
    """The leaf entries of the B-tree at ``root`` in the file bytes ``raw`` (a copy)."""
    level_nodes, leaves = [root], []
    while level_nodes:
        children = []
        for node in level_nodes:
            at = base + node
            head = raw[at : at + 8].tobytes()
            if head[:4] != b"TREE" or head[4] != 1:
                raise ValueError(f"no chunk B-tree node at address {node}")
            used = head[6] | head[7] << 8
            entries = raw[at + 24 : at + 24 + used * key.itemsize]
            (leaves if head[5] == 0 else children).append(entries)
        level_nodes = [
            int(a)
            for block in children
            for a in block.reshape(-1, key.itemsize).copy().view(key)["child"].ravel()
        ]
    return np.concatenate(leaves).view(key) if leaves else None


def _header_address(dset: Any) -> int:
    """File address of ``dset``'s object header.

    ``H5Gget_objinfo`` answers from the header alone; ``H5Oget_info`` (all fields)
    also sizes the chunk index, walking all of it (0.1-0.5 s for NSD's 700k chunks).
    """
    import h5py

    try:
        low, high = h5py.h5g.get_objinfo(dset.id).objno
        if not high:
            return int(low)
    except (AttributeError, TypeError, ValueError):
        pass
    return int(h5py.h5o.get_info(dset.id).addr)


def chunk_addresses(dset: Any, path: str | Path) -> dict[str, np.ndarray] | None:
    """Where each chunk of ``dset`` lies in ``path``: chunk offsets, address, size, filter mask.

    Returns None for a dataset that is not chunked. Walks a version-1 chunk B-tree
    itself (how MATLAB's and h5py's default settings index chunks); otherwise uses
    h5py's ``chunk_iter`` (one Python call per chunk, slower but general).
    """
    if dset.chunks is None:
        return None
    h5file = dset.file
    base = int(h5file.id.get_create_plist().get_userblock())
    header = _header_address(dset)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = _layout_btree_address(lambda at, n: _read(fd, at, n), header, base)
        if found is not None:
            offsets, address, size, mask = _btree_v1_chunks(fd, found[0], found[1], base)
            # (H5Dget_num_chunks would walk the whole index again: the caller checks
            # the chunk offsets instead)
            if len(address) <= int(np.prod(dset.shape)):
                return {"offset": offsets, "address": address, "size": size, "mask": mask}
    except (OSError, ValueError, struct.error):
        pass  # not the layout we decode: ask h5py
    finally:
        os.close(fd)
    rows: list[tuple] = []
    dset.id.chunk_iter(
        lambda info: rows.append(
            (*info.chunk_offset, info.byte_offset, info.size, info.filter_mask)
        )
    )
    table = np.asarray(rows, dtype=np.int64).reshape(len(rows), dset.ndim + 3)
    return {
        "offset": table[:, : dset.ndim],
        "address": table[:, dset.ndim],
        "size": table[:, dset.ndim + 1],
        "mask": table[:, dset.ndim + 2],
    }


def voxel_chunk_addresses(dset: Any, path: str | Path) -> np.ndarray | None:
    """Address of each voxel's chunk in a ``(T, K, J, I)`` dataset chunked ``(T, 1, 1, 1)``.

    Returns an int64 array over the flat ``(K, J, I)`` volume (-1: the chunk was never
    written, so every trial reads as the fill value), or None when the dataset is not
    chunked one voxel per chunk, or its chunks are filtered (compressed): such files
    are read through h5py.
    """
    n_trials = dset.shape[0]
    if dset.chunks != (n_trials, 1, 1, 1) or dset.id.get_create_plist().get_nfilters():
        return None
    table = chunk_addresses(dset, path)
    if table is None:
        return None
    offset = table["offset"]
    if (
        len(offset)
        and (offset[:, 0].any() or (table["size"] != n_trials * dset.dtype.itemsize).any())
        or table["mask"].any()
    ):
        return None
    if len(offset) and ((offset[:, 1:] >= np.asarray(dset.shape[1:])).any() or offset.min() < 0):
        raise ValueError(f"{path}: chunk offsets outside {dset.shape} in the chunk index")
    addresses = np.full(int(np.prod(dset.shape[1:])), -1, np.int64)
    flat = np.ravel_multi_index(tuple(offset[:, 1:].T), dset.shape[1:])
    addresses[flat] = table["address"]
    if np.count_nonzero(addresses >= 0) != len(flat):
        raise ValueError(f"{path}: a chunk is listed twice in the chunk index")
    return addresses


def read_chunked_voxels(
    path: str | Path,
    addresses: np.ndarray,
    out: np.ndarray,
    fill: int = 0,
) -> np.ndarray:
    """Read voxels' chunks (one voxel's trials each) into the rows of ``out``.

    Parameters
    ----------
    path : path
        The HDF5 file.
    addresses : ndarray of int64, shape (n_voxels,)
        File offset of each voxel's chunk (-1: never written, filled with ``fill``).
    out : ndarray, shape (n_voxels, n_trials), C-contiguous
        Voxel-major buffer; row ``v`` receives voxel ``v``'s trials.

    Chunks are read in file order; chunks adjacent in the file form one ``preadv``
    into their (scattered) rows, so the file is read once, sequentially, with a
    system call per run of adjacent chunks rather than per chunk.
    """
    if not out.flags.c_contiguous or out.shape[0] != len(addresses):
        raise ValueError("out must be C-contiguous with one row per address")
    row_bytes = out.shape[1] * out.dtype.itemsize
    order = np.argsort(addresses, kind="stable")
    sorted_addr = addresses[order]
    missing = int(np.searchsorted(sorted_addr, 0))
    if missing:
        out[order[:missing]] = fill
    order, sorted_addr = order[missing:], sorted_addr[missing:]
    if not len(order):
        return out
    # run starts: where the next chunk does not follow the previous one in the file
    breaks = np.flatnonzero(np.diff(sorted_addr) != row_bytes) + 1
    starts = np.concatenate([[0], breaks, [len(order)]])
    # cap runs at IOV_MAX buffers
    bounds: list[int] = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        bounds.extend(range(int(a), int(b), IOV_MAX))
    bounds.append(len(order))
    rows = memoryview(out.reshape(len(out), -1).view(np.uint8)).cast("B")
    order_list = order.tolist()
    addr_list = sorted_addr.tolist()
    fd = os.open(path, os.O_RDONLY)
    try:
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            bufs = [rows[r * row_bytes : (r + 1) * row_bytes] for r in order_list[a:b]]
            want = (b - a) * row_bytes
            got = os.preadv(fd, bufs, addr_list[a])
            if got != want:
                raise OSError(f"{path}: short read at {addr_list[a]} ({got} of {want} bytes)")
    finally:
        os.close(fd)
    return out


def _key_dtype(dims: int) -> np.dtype:
    """One entry of a version-1 chunk B-tree node: its key (chunk size, filter mask,
    ``dims`` offsets) and the child address after it."""
    return np.dtype(
        [("size", "<u4"), ("mask", "<u4"), ("offset", "<u8", (dims,)), ("child", "<u8")]
    )


class ChunkLayoutError(ValueError):
    """The chunk index does not describe one unfiltered chunk per voxel, as expected."""


def streamable_index(dset: Any, read: Callable[[int, int], bytes]) -> tuple[int, int, int] | None:
    """(B-tree root address, key dimensionality, base address) of a per-voxel chunked ``dset``.

    ``read(offset, size)`` reads the file's bytes (e.g. the first bytes of a download).
    None when ``dset`` is not chunked one unfiltered voxel per chunk, or its chunk index
    is not a version-1 B-tree whose layout message ``read`` can reach.
    """
    n_trials = dset.shape[0]
    if dset.chunks != (n_trials, 1, 1, 1) or dset.id.get_create_plist().get_nfilters():
        return None
    try:
        base = int(dset.file.id.get_create_plist().get_userblock())
        found = _layout_btree_address(read, _header_address(dset), base)
    except (OSError, ValueError, struct.error):
        return None
    if found is None or found[1] != dset.ndim + 1:
        return None
    return found[0] + base, found[1], base


class StreamedChunks:
    """Gathers voxels' chunks out of a file's bytes as they arrive, in file order.

    The chunk index (a version-1 B-tree) lies among the chunks, so it is walked top-down
    as the stream reaches each node: a node's children (nodes, or in a leaf the kept
    voxels' chunks) that are still ahead are awaited; those already passed are taken
    from a window of the last ``window``..2 × ``window`` bytes, or, when the window has
    moved on, read from the verified file at the end (:meth:`finish`). Every chunk is
    placed by the index itself, so the result equals reading the finished file whatever
    the order of nodes and chunks in it; locality only decides how much :meth:`finish`
    still reads (on an NSD-shaped session written by HDF5, ~2 % of the kept voxels with a
    64 MB window). The window is the pieces of the stream themselves, held by reference
    (a download's ``bytes``; nothing is copied into a ring), and each kept voxel's chunk
    is copied once, straight into its row. Memory: ``out`` and the window (2 ×
    ``window`` bytes).

    Parameters
    ----------
    root : int
        File address of the B-tree's root node (:func:`streamable_index`).
    dims : int
        Dimensionality of the chunk keys (the dataset's rank + 1).
    base : int
        Base address of the file (its user block size).
    volume : (K, J, I)
        The dataset's shape past the trial axis.
    kept : ndarray of int64, shape (K * J * I,)
        Row of ``out`` of each voxel of the flat volume; -1 for voxels not kept.
    out : ndarray of int16, shape (n_voxels, n_trials), C-contiguous
        Receives each kept voxel's chunk as its row.
    on_rows : callable, optional
        Called (on the feeding thread) with ``(rows, values)`` as chunks are placed from
        the stream: the rows of ``out`` just filled and their values (e.g. to sum each
        voxel while its chunk is in cache; see
        :class:`~brainpipe.datasets.nsd_store.TrainStats`). Not called for the rows
        :meth:`finish` fills.
    """

    def __init__(
        self,
        root: int,
        dims: int,
        base: int,
        volume: tuple[int, ...],
        kept: np.ndarray,
        out: np.ndarray,
        window: int | None = None,
        on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        self.dims, self.base, self.volume = dims, base, tuple(volume)
        self.key = _key_dtype(dims)
        self.kept, self.out, self.on_rows = kept, out, on_rows
        self.row_bytes = out.shape[1] * out.dtype.itemsize
        self.rows = out.view(np.uint8).reshape(len(out), self.row_bytes)
        self.window = max(int(STREAM_WINDOW if window is None else window), 1 << 12)
        # the last 2 × window bytes of the stream, as the pieces that brought them (held,
        # not copied): file offset each piece starts at, and the piece
        self.starts: deque[int] = deque()
        self.pieces: deque[np.ndarray] = deque()
        self.held = 0  # bytes in self.pieces
        self.void = np.dtype((np.void, self.row_bytes))  # a chunk as one element
        self.out_rows = out.view(np.uint8).reshape(len(out), self.row_bytes).view(self.void)[:, 0]
        self.pos = 0
        self.nodes: list[tuple[int, int, int]] = [(root + 8, root, 0)]  # (need, address, stage)
        self.pending = (np.empty(0, np.int64), np.empty(0, np.int64))  # chunks ahead
        self.missed_nodes: list[int] = []
        self.missed: list[tuple[np.ndarray, np.ndarray]] = []  # chunks passed: from the file
        self.seen = np.zeros(len(out), bool)
        self.placed = 0  # kept voxels given a chunk (to catch one listed twice)
        self.from_file = 0  # of them, read from the file by finish()

    def feed(self, data: memoryview) -> None:
        """The next bytes of the file (from offset 0 on, in order).

        Bytes of an immutable ``bytes`` object (what a download hands on) are held as
        they are until the window has passed them; anything else is copied first.
        """
        view = memoryview(data).cast("B")
        if not len(view):
            return
        if not (view.readonly and isinstance(view.obj, bytes)):
            view = memoryview(bytes(view))
        data_u8 = np.frombuffer(view, np.uint8)
        for at in range(0, len(data_u8), self.window):  # walked every window at least
            piece = data_u8[at : at + self.window]
            self.starts.append(self.pos)
            self.pieces.append(piece)
            self.pos += len(piece)
            self.held += len(piece)
            while len(self.pieces) > 1 and self.held - len(self.pieces[0]) >= 2 * self.window:
                self.held -= len(self.pieces.popleft())
                self.starts.popleft()
            self._walk()
            self._take_pending()

    @property
    def wbase(self) -> int:
        """File offset of the oldest byte of the window (the last 2 × ``window`` bytes)."""
        return max(self.starts[0] if self.starts else 0, self.pos - 2 * self.window)

    def _bytes(self, at: int, n: int) -> np.ndarray:
        """File bytes ``[at, at + n)`` from the window (a copy where they span pieces)."""
        k = bisect.bisect_right(self.starts, at) - 1
        o = at - self.starts[k]
        piece = self.pieces[k]
        if o + n <= len(piece):
            return piece[o : o + n]
        parts, left = [piece[o:]], n - (len(piece) - o)
        while left > 0:
            k += 1
            parts.append(self.pieces[k][:left])
            left -= len(parts[-1])
        return np.concatenate(parts)

    def _want_node(self, address: int) -> None:
        if address + 8 > self.pos or address >= self.wbase:
            heapq.heappush(self.nodes, (address + 8, address, 0))
        else:
            self.missed_nodes.append(address)

    def _walk(self) -> None:
        """Parse every awaited node whose bytes have arrived."""
        leaves = []
        while self.nodes and self.nodes[0][0] <= self.pos:
            _, at, stage = heapq.heappop(self.nodes)
            if at < self.wbase:  # passed before it was whole (a window smaller than a node)
                self.missed_nodes.append(at)
                continue
            head = self._bytes(at, 8).tobytes()
            if head[:4] != b"TREE" or head[4] != 1:
                raise ChunkLayoutError(f"no chunk B-tree node at address {at}")
            used = head[6] | head[7] << 8
            end = at + 24 + used * self.key.itemsize
            if stage == 0:
                heapq.heappush(self.nodes, (end, at, 1))  # the whole node next
                continue
            entries = self._bytes(at + 24, used * self.key.itemsize)
            if head[5] == 0:
                leaves.append(entries.copy())  # bytes: viewed as entries all at once below
            else:
                children = entries.copy().view(self.key)["child"].astype(np.int64) + self.base
                for child in children.tolist():
                    self._want_node(child)
        if leaves:
            self._leaf_entries(np.concatenate(leaves).view(self.key), from_window=True)

    def _leaf_entries(self, entries: np.ndarray, from_window: bool) -> None:
        """Place the kept voxels' chunks listed in leaf ``entries``."""
        offset = entries["offset"].astype(np.int64)
        if (
            offset[:, 0].any()
            or (entries["size"] != self.row_bytes).any()
            or entries["mask"].any()
            or (offset[:, 1:-1] >= np.asarray(self.volume)).any()
        ):
            raise ChunkLayoutError("a chunk is not one unfiltered voxel of the volume")
        flat = np.ravel_multi_index(tuple(offset[:, 1:-1].T), self.volume)
        rows = self.kept[flat]
        keep = rows >= 0
        rows, address = rows[keep], entries["child"].astype(np.int64)[keep] + self.base
        self.seen[rows] = True
        self.placed += len(rows)
        if not from_window:
            self.missed.append((address, rows))
            return
        ready = address + self.row_bytes <= self.pos
        here = ready & (address >= self.wbase)
        self._copy(address[here], rows[here])
        if (ready & ~here).any():
            self.missed.append((address[ready & ~here], rows[ready & ~here]))
        if not ready.all():
            self.pending = (
                np.concatenate([self.pending[0], address[~ready]]),
                np.concatenate([self.pending[1], rows[~ready]]),
            )

    def _take_pending(self) -> None:
        address, rows = self.pending
        if not len(address):
            return
        ready = address + self.row_bytes <= self.pos
        if ready.any():
            here = ready & (address >= self.wbase)  # all of them unless the window is tiny
            self._copy(address[here], rows[here])
            if (ready & ~here).any():
                self.missed.append((address[ready & ~here], rows[ready & ~here]))
            self.pending = (address[~ready], rows[~ready])

    def _copy(self, address: np.ndarray, rows: np.ndarray) -> None:
        """Copy the chunks at file offsets ``address`` (all in the window) to ``rows``."""
        if not len(address):
            return
        rb = self.row_bytes
        starts = np.fromiter(self.starts, np.int64, len(self.starts))
        k = np.searchsorted(starts, address, side="right") - 1
        for piece_no in np.unique(k).tolist():
            mine = k == piece_no
            piece, first = self.pieces[piece_no], int(starts[piece_no])
            o, r = address[mine] - first, rows[mine]
            whole = o + rb <= len(piece)
            if whole.any():
                # each chunk one element of a view of the piece: a memcpy per chunk
                chunks = np.ndarray((len(piece) - rb + 1,), self.void, piece, 0, (1,))
                got = chunks[o[whole]]
                self.out_rows[r[whole]] = got
                if self.on_rows is not None:
                    self.on_rows(r[whole], got.view(self.out.dtype).reshape(len(got), -1))
            for at, row in zip(o[~whole].tolist(), r[~whole].tolist(), strict=True):
                self.rows[row] = self._bytes(first + at, rb)  # one spanning two pieces
                if self.on_rows is not None:
                    self.on_rows(np.array([row]), self.out[row : row + 1])

    def finish(self, path: str | Path, fill: int = 0) -> np.ndarray:
        """Complete ``out`` from the verified file ``path``: what the window had passed.

        Raises ChunkLayoutError when the index points past the file's end or lists a
        voxel twice. Voxels without a chunk (never written) get ``fill``.
        """
        if self.nodes or len(self.pending[0]):
            raise ChunkLayoutError(f"{path}: the chunk index points past the end of the file")
        if self.missed_nodes:
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                raw = np.frombuffer(m, np.uint8)
                for node in self.missed_nodes:
                    table = _walk_nodes(raw, node - self.base, self.key, self.base)
                    if table is not None:
                        self._leaf_entries(table.copy(), from_window=False)
                del raw
        if self.missed:
            address = np.concatenate([a for a, _ in self.missed])
            rows = np.concatenate([r for _, r in self.missed])
            got = np.empty((len(rows), self.out.shape[1]), self.out.dtype)
            read_chunked_voxels(path, address, got)
            self.out[rows] = got
            self.from_file = len(rows)
        if self.placed != int(np.count_nonzero(self.seen)):
            raise ChunkLayoutError(f"{path}: a voxel's chunk is listed twice in the chunk index")
        if self.placed < len(self.out):
            self.out[~self.seen] = fill
        return self.out
