"""Decoding and validation of the input events (the contract in ``schemas/``)."""
