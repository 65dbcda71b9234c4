"""Benchmarks of corral and the peers and floors they are compared against; figures go to docs/BENCHMARKS.md."""
