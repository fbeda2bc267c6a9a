"""How a built EROFS image goes on the wire: raw or zstd-wrapped, with a dm-verity tree and a chunk index.

Import direction: ``converter.blob`` imports only ``converter.errors`` and third-party code;
``converter.convert.layer`` calls it after an image is built. See docs/blob-encoding.md.
"""
