"""Benchmarks, run by `make bench`: each module measures against a baseline and prints the ratio.

A module here exposes `run()` (see `bench/__main__.py`).
"""
