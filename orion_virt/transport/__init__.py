"""Byte carriers: shared-memory rings (device files and ivshmem BARs) and TCP."""
