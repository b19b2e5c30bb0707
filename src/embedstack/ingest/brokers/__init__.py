"""Queue backends on real brokers: Kafka protocol and Redis Streams, and the --queue URL."""
