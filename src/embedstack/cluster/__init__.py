"""Cluster mode: virtual shards on Ray nodes, a log broker as the write path (DESIGN.md)."""
