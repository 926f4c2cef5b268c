"""Generators of small sample datasets from real simulators (run in their own virtualenv, see data/sample/README.md)."""
