"""Benchmarks of the service; see each module's docstring for what it measures."""
