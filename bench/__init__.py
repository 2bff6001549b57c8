"""Benchmarks: `python -m bench` runs them all and prints the figures (medians, and ratios against a
baseline measured in the same run). Not part of the test suite."""
