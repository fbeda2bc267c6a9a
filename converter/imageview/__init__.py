"""Read an EROFS image reference (registry or ``oci:``) as a runtime sees it, fetching only what is read.

Import direction: ``converter.imageview`` imports blob, erofs, oci, transports and registry;
only ``converter.cli`` imports it.
"""
