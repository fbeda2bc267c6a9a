"""Test and demo helpers: the sample image, a local registry, the demos. The product never imports this."""
