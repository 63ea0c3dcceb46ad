from __future__ import annotations

import asyncio

from streamedge.config import QueueConfig
from streamedge.pipeline.shards import Shard, ShardSet
from streamedge.records import RawMessage, StreamKey

A = StreamKey("a", "s")
B = StreamKey("b", "s")


def msg(key: StreamKey, n: int, size: int = 10) -> RawMessage:
    return RawMessage(stream=key, payload=bytes([n % 256]) * size, received_at=float(n))


def make(max_bytes: int = 10_000) -> tuple[ShardSet, list[tuple[int, str]]]:
    dropped: list[tuple[int, str]] = []
    shards = ShardSet(
        1, max_bytes=max_bytes, on_drop=lambda r, why: dropped.append((int(r.received_at), why))
    )
    return shards, dropped


async def drain(shard: Shard, n: int) -> list[RawMessage]:
    return [await shard.get() for _ in range(n)]


async def test_drop_oldest_keeps_the_newest() -> None:
    shards, dropped = make()
    shard = shards.shards[0]
    cfg = QueueConfig(size=2, on_full="drop_oldest")
    for i in range(5):
        await shard.put(msg(A, i), cfg)
    got = await drain(shard, 2)
    assert [int(m.received_at) for m in got] == [3, 4]
    assert dropped == [(0, "queue_full"), (1, "queue_full"), (2, "queue_full")]


async def test_drop_newest_keeps_the_backlog() -> None:
    shards, dropped = make()
    shard = shards.shards[0]
    cfg = QueueConfig(size=2, on_full="drop_newest")
    for i in range(4):
        await shard.put(msg(A, i), cfg)
    assert [int(m.received_at) for m in await drain(shard, 2)] == [0, 1]
    assert dropped == [(2, "queue_full"), (3, "queue_full")]


async def test_block_waits_and_loses_nothing() -> None:
    shards, dropped = make()
    shard = shards.shards[0]
    cfg = QueueConfig(size=2, on_full="block")

    async def produce() -> None:
        for i in range(20):
            await shard.put(msg(A, i), cfg)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.01)
    assert shard.depth == 2  # the producer is waiting
    assert not producer.done()
    got = await drain(shard, 20)
    await producer
    assert [int(m.received_at) for m in got] == list(range(20))
    assert dropped == []


async def test_byte_budget_applies_across_streams() -> None:
    shards, dropped = make(max_bytes=25)
    shard = shards.shards[0]
    cfg = QueueConfig(size=100, on_full="drop_newest")
    await shard.put(msg(A, 0), cfg)
    await shard.put(msg(B, 1), cfg)
    await shard.put(msg(A, 2), cfg)  # 30 bytes would exceed 25
    assert dropped == [(2, "queue_bytes")]
    assert shards.budget.used == 20
    await drain(shard, 2)
    assert shards.budget.used == 0


async def test_streams_take_turns_and_keep_their_order() -> None:
    shards, _ = make()
    shard = shards.shards[0]
    cfg = QueueConfig(size=10)
    for i in range(3):
        await shard.put(msg(A, i), cfg)
    for i in range(10, 13):
        await shard.put(msg(B, i), cfg)
    got = [int(m.received_at) for m in await drain(shard, 6)]
    assert got == [0, 10, 1, 11, 2, 12]


async def test_drain_all_empties_and_releases_bytes() -> None:
    shards, _ = make()
    shard = shards.shards[0]
    for i in range(3):
        await shard.put(msg(A, i), QueueConfig())
    assert len(shard.drain_all()) == 3
    assert shard.depth == 0
    assert shards.budget.used == 0
    assert shards.idle


def test_shard_for_is_stable() -> None:
    shards = ShardSet(4, max_bytes=1000, on_drop=lambda r, why: None)
    assert shards.shard_for(A) is shards.shard_for(StreamKey("a", "s"))
    assert len({shards.shard_for(StreamKey(str(i), "s")).name for i in range(50)}) == 4
