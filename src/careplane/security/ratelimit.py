"""Rate limits on the endpoints that take credentials (password login, OAuth2 token).

A token bucket per client address and endpoint family: a burst is allowed, then requests are
admitted at the refill rate; beyond it the answer is 429 with ``Retry-After``. This slows down
credential stuffing from one address; the per-account lockout
(:data:`careplane.security.identity.MAX_FAILED_LOGINS`) stops guessing at one account from
many addresses. Buckets live in this process: with several API processes behind a balancer,
each admits its own share.

The middleware sits innermost (inside the request-id and security-header middleware), so a
429 carries the same headers and request id as any other answer.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LIMITS", "Limit", "RateLimitMiddleware", "TokenBuckets"]


@dataclass(frozen=True)
class Limit:
    name: str
    burst: int
    per_minute: float
    oauth: bool = False  # answer with an RFC 6749 error body


# (method, path) → the limit that applies; matched exactly, so nothing else pays for it.
LIMITS: dict[tuple[str, str], Limit] = {
    ("POST", "/login"): Limit("login", 20, 20),
    ("POST", "/api/auth/token"): Limit("login", 20, 20),
    ("POST", "/oauth2/token"): Limit("oauth-token", 120, 120, oauth=True),
    ("POST", "/oauth2/introspect"): Limit("oauth-token", 120, 120, oauth=True),
    ("POST", "/oauth2/revoke"): Limit("oauth-token", 120, 120, oauth=True),
    ("POST", "/oauth2/authorize"): Limit("oauth-authorize", 30, 30, oauth=True),
}


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
                 ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, limit: Limit, key: str) -> float:
        """0 if admitted, otherwise the seconds until the next request would be."""
        now = self._clock()
        rate = limit.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get((limit.name, key), (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[(limit.name, key)] = (tokens - 1.0, now)
                if len(self._buckets) > self._max_keys:
                    self._prune(now)
                return 0.0
            self._buckets[(limit.name, key)] = (tokens, now)
            return (1.0 - tokens) / rate

    def _prune(self, now: float) -> None:
        # Buckets idle for ten minutes are full again: forgetting them changes nothing.
        stale = [k for k, (_t, last) in self._buckets.items() if now - last > 600]
        for key in stale:
            del self._buckets[key]


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, buckets: TokenBuckets | None = None) -> None:
        self.app = app
        self.buckets = buckets or TokenBuckets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = LIMITS.get((scope["method"], scope["path"]))
        if limit is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(limit, client[0] if client else "unknown")
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        message = f"too many requests; retry after {retry} s"
        body: dict[str, object] = ({"error": "slow_down", "error_description": message}
                                   if limit.oauth else
                                   {"error": {"status": 429, "message": message}})
        payload = orjson.dumps(body)
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", str(retry).encode()),
            (b"cache-control", b"no-store"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
