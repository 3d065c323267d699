"""Benchmarks (run as scripts or import as `bench.<name>`)."""
