"""Benchmarks: each prints a table of its figures beside their goals (`python -m bench.fleet`)."""
