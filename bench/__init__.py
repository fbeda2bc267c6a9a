"""``make bench``: races erofs-converter against the C toolchain users run today.

``bench.inputs`` builds (once, cached) a realistic four-layer image; ``bench.run`` converts it
side by side with ``skopeo`` + ``gzip -dc | mkfs.erofs`` and reports time, throughput and
peak memory. Never part of ``make test``.
"""
