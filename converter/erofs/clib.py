"""Loading the system compression libraries our writer calls through ctypes (liblz4, liblzma)."""

from __future__ import annotations

import ctypes
import ctypes.util

from converter.errors import ToolError

__all__ = ["load_library"]


def load_library(name: str, soname: str, *, needs: tuple[str, ...], what: str, install: str) -> ctypes.CDLL:
    """The system library ``name`` (``soname`` if ldconfig does not know it), which must export
    every symbol in ``needs``; otherwise one ToolError saying what to install, or to use mkfs."""
    try:
        dll = ctypes.CDLL(ctypes.util.find_library(name) or soname)
        for symbol in needs:
            getattr(dll, symbol)
    except (OSError, AttributeError) as exc:
        raise ToolError(f"loading {what} for the python builder: {exc}; install {install} "
                        "or use --builder mkfs") from exc
    return dll
