"""Tests of converter.oci."""
