"""Number formats for quantized training: fake quantization to int, FP8, MX and casts."""

from quant.constants import FORMATS, FormatSpec
from quant.formats import fake_quantize

__all__ = ["FORMATS", "FormatSpec", "fake_quantize"]
