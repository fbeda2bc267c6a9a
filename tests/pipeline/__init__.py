"""Tests of converter.pipeline and converter.transports."""
