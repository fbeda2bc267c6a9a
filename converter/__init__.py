"""erofs-converter: turn container images into images whose layers are EROFS filesystems."""

__version__ = "0.7.0"

from converter import native as _native

_native.install()  # compiled per-entry modules only where they match the sources (native.py)
