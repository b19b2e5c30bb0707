"""Batching: the batcher (one owner of the queues), batch planning, packed token ids and the
padded sub-batch loop of the fast engines."""
