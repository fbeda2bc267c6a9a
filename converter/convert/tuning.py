"""Interpreter settings for a process that builds layers (the CLI's, a build process's)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import sys
from collections.abc import Iterator

#: The collector's first-generation threshold for a command's run (CPython's default is 700).
#: A layer's tree is tens of thousands of small objects that live until the image is written,
#: so the default threshold runs the collector hundreds of times per layer, mostly to find
#: nothing: 0.19 s of 2.9 s on the 50,000-small-files layer, 0.27-0.35 s in image mode;
#: 10,000 halves that (README.md, Performance).
GC_GEN0_THRESHOLD = 10_000

#: The GIL switch interval while one layer is built by one process (``convert layer``, a build
#: process), instead of CPython's 5 ms. The parsing thread holds the GIL almost all the time;
#: the read-ahead thread (decompression and hashing, docs/architecture.md §3.1) needs it for a
#: moment between its C calls and, with 5 ms, waits for it so long that the parser runs dry.
#: Measured with ``convert layer`` (alternating runs): the 50,000-small-files layer 2.24-2.32 s
#: -> 1.98-2.05 s, rootfs 0.94-1.04 -> 0.91-0.95 s, packages 1.15-1.20 -> 1.12-1.16 s;
#: ``erofs+lz4`` unchanged. Image conversions (several threads pulling, pushing and building)
#: gained nothing and spent more CPU, so they keep the default.
LAYER_SWITCH_INTERVAL = 0.0002


#: glibc's malloc arenas per CPU for a command's run (glibc's default on 64-bit: 8). Each thread
#: that allocates gets an arena of its own while there are fewer than the limit, and an arena
#: keeps the memory freed into it for its next allocations instead of returning it: an image
#: conversion has a thread or more per download, upload, read-ahead, hasher and compressor,
#: so with 16 arenas on 2 CPUs each held its own high-water mark. Measured on the bench image,
#: ``erofs+lz4``, alternating runs (README.md, Performance): peak RSS 168-186 MiB with glibc's
#: default, 150-173 MiB with 4 arenas (2 per CPU; medians 180 -> 162), the same time; layer
#: mode unchanged.
MALLOC_ARENAS_PER_CPU = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)


def limit_malloc_arenas(cpus: int | None = None) -> bool:
    """Limit glibc's malloc to ``MALLOC_ARENAS_PER_CPU`` arenas per CPU (for the threads started
    afterwards); True if the limit was set. Left alone (False): another C library, or a limit the
    user chose (``MALLOC_ARENA_MAX``, or ``arena_max`` in ``GLIBC_TUNABLES``)."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - every glibc has mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS_PER_CPU * max(1, count)))


def raise_gc_threshold() -> None:
    """Set the first-generation threshold to ``GC_GEN0_THRESHOLD`` unless the collector is off
    (threshold 0: someone switched it off; leave it so) or already set higher."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for a command's one piece of work, unless it is off already.

    Why: a build's objects are freed by reference counting (the tree, entries and buffers hold
    no cycles), so the collections only traverse the growing trees to find next to nothing.
    Measured: 26 collections, 0.07 s on the 50,000-small-files layer even with
    ``GC_GEN0_THRESHOLD``, and the same peak RSS without them (103-104 MB); converting the bench
    image, 31-35 collections taking 0.08-0.12 s with the GIL held, which found 825-855 objects, and
    with the collector paused 1,881 objects of cyclic garbage were left for the collection
    afterwards (README.md, Performance). For one command's run only: a long-lived process that
    converts image after image (``convert mirror``) keeps collecting.

    Collection resumes afterwards with what was allocated meanwhile moved to the oldest
    generation untraversed: a plain ``gc.enable()`` would collect every object of the work at
    the next allocation instead.
    """
    pause = gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if pause:
            gc.freeze()  # the young generations' objects, into the permanent one ...
            gc.unfreeze()  # ... and from there into the oldest: no collection now
            gc.enable()


@contextlib.contextmanager
def one_layer_at_a_time() -> Iterator[None]:
    """While this process builds one layer and does little else: hand the GIL over sooner
    (``LAYER_SWITCH_INTERVAL``), and pause the cyclic collector (``collector_paused``)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(LAYER_SWITCH_INTERVAL)
    try:
        with collector_paused():
            yield
    finally:
        sys.setswitchinterval(previous)
