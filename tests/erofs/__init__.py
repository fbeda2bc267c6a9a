"""Tests of the pure-Python EROFS writer and reader (converter/erofs)."""
