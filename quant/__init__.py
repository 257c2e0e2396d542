"""Number formats, quantized training and update codecs.

`fake_quantize` rounds a tensor to a number format; `Codec` turns arrays into the bytes of a
compressed update and back; `PayloadError` is what decoding bad bytes raises.
"""

from quant.codec import Codec
from quant.constants import FORMATS, FormatSpec
from quant.errors import PayloadError
from quant.formats import fake_quantize

__all__ = ["FORMATS", "Codec", "FormatSpec", "PayloadError", "fake_quantize"]
