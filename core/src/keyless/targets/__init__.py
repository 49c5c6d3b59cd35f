"""Exchanges: one module per target, each delegating to the vendor library."""
