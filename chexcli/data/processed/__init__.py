"""Processed folders: their file names, atomic writes, split tables, manifest and `chex data info`."""
