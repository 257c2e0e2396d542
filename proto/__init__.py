"""Protocol buffer contracts of fedq and their generated modules (`python -m proto.generate`)."""
