"""Payload decoders: readings (JSON, msgpack) and frames (JPEG, PNG, raw, envelope)."""

from streamedge.decoders.payloads import PayloadDecoder, sniff_kind

__all__ = ["PayloadDecoder", "sniff_kind"]
