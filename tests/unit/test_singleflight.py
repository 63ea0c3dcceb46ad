from __future__ import annotations

import asyncio

import pytest

from streamedge.pipeline.singleflight import SingleFlight


async def test_concurrent_calls_with_one_key_share_one_run() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert [r for r, _ in results] == [42] * 5
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]
    assert len(flights) == 0


async def test_different_keys_run_separately() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def work(v: str) -> str:
        await asyncio.sleep(0)
        return v

    a, b = await asyncio.gather(
        flights.run("a", lambda: work("a")), flights.run("b", lambda: work("b"))
    )
    assert (a, b) == (("a", False), ("b", False))


async def test_errors_reach_every_waiter_and_the_key_is_freed() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def failing() -> int:
        await gate.wait()
        raise ValueError("boom")

    tasks = [asyncio.create_task(flights.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)

    async def ok() -> int:
        return 1

    assert await flights.run("k", ok) == (1, False)


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    first = asyncio.create_task(flights.run("k", work))
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.set()
    assert await first == (7, False)
