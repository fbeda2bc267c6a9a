"""Tests of converter.layers: tar parsing, decompression and normalisation."""
