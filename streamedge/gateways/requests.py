"""On-demand requests on MQTT 3.1.1, which has no Response Topic property.

A request on ``<prefix>/req/{device}/{stream}`` names where its answer goes in
its own payload: ``reply_to`` (a topic without wildcards) and an optional
``correlation`` (any JSON value, echoed in the answer), in a JSON or msgpack
reading map or a msgpack frame envelope. MQTT 5 clients use the Response Topic
and Correlation Data properties instead.
"""

from __future__ import annotations

import json

import msgpack

from streamedge.topics import valid_topic


def reply_fields(payload: bytes) -> tuple[str | None, bytes | None]:
    """``(reply_to, correlation as JSON bytes)`` from a request payload; ``(None, None)``
    when the payload is no map or names no valid ``reply_to``."""
    first = payload[:1]
    try:
        if first in (b"{", b" ", b"\n", b"\t"):
            doc = json.loads(payload)
        elif first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
            doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        else:
            return None, None  # a bare JPEG/PNG cannot carry a reply topic
    except (ValueError, msgpack.UnpackException):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    reply_to = doc.get("reply_to")
    if not isinstance(reply_to, str) or not valid_topic(reply_to):
        return None, None
    correlation = doc.get("correlation")
    try:
        encoded = None if correlation is None else json.dumps(correlation).encode()
    except (TypeError, ValueError):
        encoded = None  # msgpack-only types (bytes): not echoable in JSON
    return reply_to, encoded
