"""Whole jobs (train into a work directory, evaluate it, decode with it) that the CLI calls."""
