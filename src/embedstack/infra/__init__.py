"""Local infrastructure processes (brokers) for development, tests and `cluster up`."""
