"""fedq's core: what both sides share (run config, wire keys, data, models, errors)."""

__version__ = "0.1.0"
