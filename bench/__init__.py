"""Benchmarks that print JSON figures (not part of the default test run)."""
