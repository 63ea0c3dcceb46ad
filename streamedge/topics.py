"""The topic tree (Frigate/EdgeX conventions) and its parsing.

::

    <prefix>/in/{device}/{stream}    device -> gateway
    <prefix>/req/{device}/{stream}   on-demand request, answered on its reply topic
    <prefix>/out/{device}/{stream}   gateway -> apps (answers)
    <prefix>/stats                   retained snapshot
    <prefix>/stats/get               request/response
    <prefix>/available               online / offline (Last Will) / stopped
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamedge.records import StreamKey

_SEGMENT = re.compile(r"^[^/#+\x00]{1,128}$")


@dataclass(frozen=True, slots=True)
class TopicScheme:
    """Builds and parses the topics under one prefix."""

    prefix: str

    @property
    def inputs(self) -> str:
        """The subscription filter for device input."""
        return f"{self.prefix}/in/+/+"

    @property
    def input_root(self) -> str:
        """Every device input topic starts with this."""
        return f"{self.prefix}/in/"

    @property
    def requests(self) -> str:
        """The subscription filter for on-demand inference requests."""
        return f"{self.prefix}/req/+/+"

    @property
    def request_root(self) -> str:
        """Every request topic starts with this."""
        return f"{self.prefix}/req/"

    @property
    def available(self) -> str:
        """Availability topic (retained)."""
        return f"{self.prefix}/available"

    @property
    def stats(self) -> str:
        """Retained stats snapshot topic."""
        return f"{self.prefix}/stats"

    @property
    def stats_get(self) -> str:
        """Stats request topic."""
        return f"{self.prefix}/stats/get"

    def output(self, stream: StreamKey) -> str:
        """Where answers for a stream are published."""
        return f"{self.prefix}/out/{stream.device}/{stream.stream}"

    def input(self, stream: StreamKey) -> str:
        """Where a device publishes a stream."""
        return f"{self.prefix}/in/{stream.device}/{stream.stream}"

    def parse_input(self, topic: str, kind: str = "in") -> StreamKey | None:
        """``<prefix>/<kind>/{device}/{stream}`` → StreamKey; anything else → None."""
        head = f"{self.prefix}/{kind}/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not all(_SEGMENT.match(p) for p in parts):
            return None
        return StreamKey(parts[0], parts[1])


def valid_segment(text: str) -> bool:
    """Whether ``text`` can be one topic level (no wildcards, no slash)."""
    return bool(_SEGMENT.match(text))


def valid_topic(text: str) -> bool:
    """Whether ``text`` can be published to (non-empty, no wildcards, no NUL)."""
    return 0 < len(text) <= 65_535 and not any(c in text for c in "#+\x00")
