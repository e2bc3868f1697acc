"""Benchmarks of the pack (`python -m bench` / `make bench`); each skips cleanly without its hardware."""
