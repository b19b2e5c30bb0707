"""The Ray side of cluster mode: shard node actors and the local development cluster."""
