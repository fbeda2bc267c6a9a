"""erofs-converter: turn container images into images whose layers are EROFS filesystems."""

__version__ = "0.6.0"
