"""embedstack: a self-hosted embedding stack."""

__version__ = "0.1.0"
