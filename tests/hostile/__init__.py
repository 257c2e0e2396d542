"""A misbehaving ClientApp for end-to-end tests of the server's update checks."""
