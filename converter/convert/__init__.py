"""Turning one source layer (tar, tar+gzip, tar+zstd) into one EROFS image."""
