"""Server-side aggregation algorithms as Flower strategies: pure logic, no sockets, no files."""
