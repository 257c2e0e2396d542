"""fedq: federated learning on Flower with quantized training and byte-counted updates."""

__version__ = "0.1.0"
