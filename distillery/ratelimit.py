"""Client-side pacing for a provider's limits: concurrency, requests/minute, tokens/minute.

We pace instead of firing and reacting to 429s because every 429 is a wasted round trip that
also counts against some providers' windows, and a burst of them makes all workers retry
together. The buckets are small (one second's worth) so that starts are spread evenly: a
server that enforces the same limit over a sliding 60 s window then never sees more than it
allows, because we also run a little under the limit (`headroom`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel, Field

# Fraction of the published limit we leave unused. In any 60 s window a bucket of one second's
# capacity admits at most rate*61 s; at 98% of the limit that is 0.9963x the limit, which leaves
# ~0.2 s of slack for network jitter in the worst window and ~1.2 s in steady pacing.
DEFAULT_HEADROOM = 0.02


class Limits(BaseModel):
    concurrency: int = Field(ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


# Moonshot's account tiers (concurrency, RPM, TPM), as published; see shared/STACK.md.
TIERS: dict[str, Limits] = {
    name: Limits(concurrency=c, rpm=r, tpm=t)
    for name, (c, r, t) in {
        "tier0": (1, 3, 500_000),
        "tier1": (50, 200, 2_000_000),
        "tier2": (100, 500, 3_000_000),
        "tier3": (200, 5000, 3_000_000),
        "tier4": (400, 5000, 4_000_000),
        "tier5": (1000, 10000, 5_000_000),
    }.items()
}


class TokenBucket:
    """A token bucket on an explicit clock (pure, so it can be simulated in tests).

    It may go into debt: a request larger than the capacity waits for a full bucket and then
    takes it all and more, and later requests wait until the debt is paid back.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate  # tokens per second
        self.capacity = capacity
        self.tokens = capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` (at most a full bucket) is available; 0 if it is now."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.tokens
        return missing / self.rate if missing > 1e-9 else 0.0

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount

    def give(self, amount: float, now: float) -> None:
        """Return tokens (or, with a negative amount, charge more)."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + amount)


def pacing_bucket(per_minute: int, headroom: float = DEFAULT_HEADROOM, now: float = 0.0) -> TokenBucket:
    """The bucket that paces a per-minute limit: a little under the rate, one second of burst."""
    return TokenBucket(per_minute * (1.0 - headroom) / 60.0, max(1.0, per_minute / 60.0), now)


class RateLimiter:
    """Admits requests under a concurrency cap, an RPM bucket and a TPM bucket.

    Use `async with limiter.slot(estimated_tokens):` around one HTTP attempt, then
    `settle(estimated, actual)` once the usage is known. Create it inside the event loop that
    uses it (asyncio primitives bind to the first loop that waits on them).
    """

    def __init__(self, limits: Limits, *, headroom: float = DEFAULT_HEADROOM) -> None:
        self.limits = limits
        now = time.monotonic()
        self._rpm = pacing_bucket(limits.rpm, headroom, now) if limits.rpm else None
        self._tpm = pacing_bucket(limits.tpm, headroom, now) if limits.tpm else None
        self._slots = asyncio.Semaphore(limits.concurrency)
        # One waiter at a time at the buckets: admission stays first-come first-served, and the
        # waiter at the head re-reads the pause deadline every time it wakes.
        self._gate = asyncio.Lock()
        self._paused_until = 0.0
        self.in_flight = 0

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        # Concurrency first, buckets second: a request leaves the gate only when it can be sent
        # at once, so paced starts are not bunched up behind a full semaphore.
        async with self._slots:
            await self._admit(tokens)
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def _admit(self, tokens: int) -> None:
        async with self._gate:
            while True:
                now = time.monotonic()
                wait = self._paused_until - now
                if wait <= 0:
                    wait = max(
                        self._rpm.wait_s(1, now) if self._rpm else 0.0,
                        self._tpm.wait_s(tokens, now) if self._tpm else 0.0,
                    )
                    if wait <= 0:
                        if self._rpm:
                            self._rpm.take(1, now)
                        if self._tpm:
                            self._tpm.take(tokens, now)
                        return
                await asyncio.sleep(wait)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the TPM bucket once the provider has reported what a request really used."""
        if self._tpm:
            self._tpm.give(estimated - actual, time.monotonic())

    def pause(self, seconds: float) -> None:
        """Hold every waiting and future request for `seconds` (a 429 concerns all workers)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
