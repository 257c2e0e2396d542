"""Errors of the quant package that callers are expected to catch."""


class PayloadError(ValueError):
    """Encoded bytes that cannot be decoded into a trustworthy tensor; the message says why.

    Raised for every defect of received bytes (wrong version, unknown codec, truncation,
    length or shape mismatches, non-finite values, sizes beyond a limit), never anything
    else: a decoder either returns the exact tensors that were encoded or raises this.
    """
