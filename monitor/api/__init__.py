"""REST API routers of the monitor, one per resource."""
