"""fedq tests."""
