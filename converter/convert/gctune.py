"""The garbage collector's setting for a process that builds layers (the CLI's, a build process's)."""

from __future__ import annotations

import gc

#: The collector's first-generation threshold for a command's run (CPython's default is 700).
#: A layer's tree is tens of thousands of small objects that live until the image is written,
#: so the default threshold runs the collector hundreds of times per layer, mostly to find
#: nothing: 0.19 s of 2.9 s on the 50,000-small-files layer, 0.27-0.35 s in image mode;
#: 10,000 halves that (README.md, Performance).
GC_GEN0_THRESHOLD = 10_000


def raise_gc_threshold() -> None:
    """Set the first-generation threshold to ``GC_GEN0_THRESHOLD`` unless the collector is off
    (threshold 0: someone switched it off; leave it so) or already set higher."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
