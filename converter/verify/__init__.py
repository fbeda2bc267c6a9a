"""Proving a converted image against its source: structure checks, content checks, reports."""
