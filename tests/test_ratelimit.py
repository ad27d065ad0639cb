"""The limiter: pacing math on a virtual clock, then the async limiter in real time."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque

import pytest
from pydantic import ValidationError

from distillery.accounting import estimate_tokens
from distillery.ratelimit import TIERS, Limits, RateLimiter, TokenBucket, pacing_bucket


def test_tiers_are_moonshots_published_limits() -> None:
    assert TIERS["tier0"] == Limits(concurrency=1, rpm=3, tpm=500_000)
    assert TIERS["tier1"] == Limits(concurrency=50, rpm=200, tpm=2_000_000)
    assert TIERS["tier5"] == Limits(concurrency=1000, rpm=10000, tpm=5_000_000)
    assert list(TIERS) == [f"tier{i}" for i in range(6)]


def test_limits_validation() -> None:
    assert Limits(concurrency=2).rpm is None
    with pytest.raises(ValidationError):
        Limits(concurrency=0)
    with pytest.raises(ValidationError):
        Limits(concurrency=1, rpm=0)


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("相关性") == 3
    assert estimate_tokens("相关 ab") == 3  # 2 CJK + 3 ASCII/4, rounded up


def test_bucket_debt_then_repayment() -> None:
    bucket = TokenBucket(rate=10, capacity=10, now=0)
    assert bucket.wait_s(50, 0) == 0  # bigger than the bucket: goes when the bucket is full
    bucket.take(50, 0)
    assert bucket.wait_s(1, 0) == pytest.approx(4.1)  # 40 of debt + 1
    bucket.give(35, 0)  # settle: the request used less than estimated
    assert bucket.wait_s(1, 0) == pytest.approx(0.6)
    assert bucket.wait_s(1, 0.6) == 0


def _rejections(arrivals: list[float], rpm: int, window_s: float = 60.0) -> int:
    """What a server enforcing `rpm` over a sliding window rejects (rejected ones don't count)."""
    accepted: deque[float] = deque()
    rejected = 0
    for t in sorted(arrivals):
        while accepted and accepted[0] <= t - window_s:
            accepted.popleft()
        if len(accepted) >= rpm:
            rejected += 1
        else:
            accepted.append(t)
    return rejected


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_pacing_passes_a_sliding_window_server(tier: str) -> None:
    """Greedy clients paced by the bucket, with network jitter and idle gaps: < 1% rejected."""
    rpm = TIERS[tier].rpm
    assert rpm is not None
    rng = random.Random(tier)
    bucket = pacing_bucket(rpm)
    now, arrivals = 0.0, []
    horizon = max(600.0, 600 * 60 / rpm)  # at least ten minutes, at least 600 requests
    while now < horizon:
        now += bucket.wait_s(1, now)
        bucket.take(1, now)
        arrivals.append(now + rng.uniform(0.0, 0.2))  # time on the wire varies
        if rng.random() < 2 / rpm:  # about every 30 s the job goes idle and the bucket refills
            now += rng.uniform(1.0, 10.0)
    assert len(arrivals) >= 0.5 * rpm * horizon / 60
    assert _rejections(arrivals, rpm) <= 0.01 * len(arrivals)


def test_rpm_starts_are_bounded_and_spread() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter(Limits(concurrency=50, rpm=120))
        starts: list[float] = []

        async def worker() -> None:
            while True:
                async with limiter.slot():
                    starts.append(time.monotonic())

        workers = [asyncio.create_task(worker()) for _ in range(20)]
        await asyncio.sleep(3.0)
        for task in workers:  # cancelling waiters must leave the limiter usable
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        async with limiter.slot():
            assert limiter.in_flight == 1
        return starts

    starts = asyncio.run(main())
    # Bucket of 2 (one second of 120 rpm) at start, then 120 * 0.98 / 60 = 1.96 per second.
    assert 5 <= len(starts) <= 2 + 1.96 * 3.0 + 1
    gaps = [b - a for a, b in itertools.pairwise(starts[2:])]
    assert min(gaps) > 0.45  # evenly spread, no bursts after the initial bucket


def test_concurrency_cap() -> None:
    async def main() -> int:
        limiter = RateLimiter(Limits(concurrency=3))
        peak = 0

        async def job() -> None:
            nonlocal peak
            async with limiter.slot():
                peak = max(peak, limiter.in_flight)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(job() for _ in range(12)))
        assert limiter.in_flight == 0
        return peak

    assert asyncio.run(main()) == 3


def test_pause_holds_everybody() -> None:
    async def main() -> tuple[float, list[float]]:
        limiter = RateLimiter(Limits(concurrency=10))
        t0 = time.monotonic()
        limiter.pause(0.3)
        starts: list[float] = []

        async def job() -> None:
            async with limiter.slot():
                starts.append(time.monotonic())

        await asyncio.gather(*(job() for _ in range(5)))
        return t0, starts

    t0, starts = asyncio.run(main())
    assert len(starts) == 5 and min(starts) - t0 >= 0.29


def test_pause_reaches_a_waiter_already_sleeping_on_the_bucket() -> None:
    async def main() -> tuple[float, list[float]]:
        limiter = RateLimiter(Limits(concurrency=10, rpm=60))  # bucket of 1: the second waits ~1 s
        t0 = time.monotonic()
        starts: list[float] = []

        async def job() -> None:
            async with limiter.slot():
                starts.append(time.monotonic() - t0)

        tasks = [asyncio.create_task(job()) for _ in range(2)]
        await asyncio.sleep(0.1)
        limiter.pause(1.2)  # a 429 arrives while the second sleeps until its token is due
        await asyncio.gather(*tasks)
        return t0, starts

    _, starts = asyncio.run(main())
    assert starts[0] < 0.1
    assert starts[1] >= 1.29  # not at ~1.02 s, when its token came


def test_tpm_waits_and_settle_refunds() -> None:
    async def main(settle: bool) -> float:
        limiter = RateLimiter(Limits(concurrency=10, tpm=60_000))  # 980 tokens/s, bucket of 1000
        t0 = time.monotonic()
        async with limiter.slot(1000):
            pass
        if settle:
            limiter.settle(1000, 100)  # the answer was short: 900 tokens come back
        async with limiter.slot(500):
            pass
        return time.monotonic() - t0

    assert asyncio.run(main(settle=False)) >= 0.45  # 500 / 980 s
    assert asyncio.run(main(settle=True)) < 0.2
