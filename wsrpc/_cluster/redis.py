"""
:class:`RedisBackplane`: the backplane on Redis (or Valkey), with ``redis.asyncio``.

Channels are Redis Pub/Sub channels, keys are Redis keys, both prefixed with
``"{name}:"``. One connection subscribes (redis-py's ``PubSub``), a small pool
sends commands. Every command has a short socket timeout and no retries, so
that an operation fails with :exc:`~wsrpc.BackplaneError` promptly while
Redis is unreachable; a background task reconnects with a growing delay (up
to 2 s) and re-subscribes.

``redis`` is imported when the backplane starts, so that wsrpc imports
without the ``redis`` extra (``pip install wsrpc[redis]``).

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from ..exceptions import BackplaneError, StateError
from .backplane import Backplane, MessageHandler, StateHandler

__all__ = ["RedisBackplane"]

logger = logging.getLogger("wsrpc.cluster")

# Keep KEYS[1] at ARGV[1] for ARGV[2] ms: 1 renewed, 2 set again (it was
# missing), 0 held by another value.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBackplane(Backplane):
    """
    Joins servers into one application through Redis (or Valkey).

    Pass one to each server: ``WebSocketServer(..., backplane=RedisBackplane(url))``;
    servers whose backplanes have the same ``url`` and ``name`` form one
    application (see ``docs/scaling.md``). One backplane serves one server.

    Args:
        url: Where Redis is, as redis-py takes it: ``redis://[[user]:password@]host[:port][/db]``,
            ``rediss://`` for TLS, ``unix:///path``.
        name: The application's name, the prefix of every channel and key:
            applications sharing one Redis must use different names.
        socket_timeout: Seconds any one Redis command may take before the
            operation fails with :exc:`BackplaneError` (default 2).
    """

    def __init__(self, url: str, *, name: str = "wsrpc", socket_timeout: float = 2.0) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a Redis URL")
        if not isinstance(name, str) or not name or any(c in name for c in "*?[] \n"):
            raise ValueError("name must be a non-empty string without spaces or glob characters")
        if not socket_timeout > 0:
            raise ValueError("socket_timeout must be positive")
        self._url = url
        self._name = name
        self._prefix = f"{name}:"
        self._socket_timeout = socket_timeout
        self._client: Any = None
        self._channels: set[str] = set()
        self._on_message: MessageHandler | None = None
        self._on_state: StateHandler | None = None
        self._up = False
        self._started = False
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self._pubsub: Any = None
        self._was_up = False
        self._outbox: list[tuple[str, bytes, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_up(self) -> bool:
        return self._up

    def __repr__(self) -> str:
        return f"<RedisBackplane name={self._name!r} {'up' if self._up else 'down'}>"

    # -- life -----------------------------------------------------------------

    async def start(
        self, channels: Iterable[str], on_message: MessageHandler, on_state: StateHandler
    ) -> None:
        if self._started:
            raise StateError("this backplane is in use already: give each server its own")
        self._started = True
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise BackplaneError(
                "RedisBackplane needs the redis package: pip install 'wsrpc[redis]'"
            ) from exc
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._scripts = {
            "renew": self._client.register_script(_RENEW),
            "release": self._client.register_script(_RELEASE),
        }
        self._channels = set(channels)
        self._on_message = on_message
        self._on_state = on_state
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        try:
            await ready
        except BaseException:
            await self.close()
            raise
        self._supervisor = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        self._closing = True
        for task in (self._supervisor, self._reader, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._supervisor = self._reader = self._sender = None
        for _, _, future in self._outbox:
            if not future.done():
                future.set_exception(BackplaneError("the backplane is closed"))
        self._outbox = []
        self._up = False
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    def kick(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done() and self._up:
            reader.cancel()  # the supervisor starts another

    async def subscribe(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.add(channel)  # every new connection subscribes to it
            pubsub = self._pubsub
            if pubsub is not None:
                try:
                    await pubsub.subscribe(self._prefix + channel)
                except Exception:
                    self.kick()

    # -- the subscribing connection ---------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            if self._closing:
                return
            logger.log(
                logging.INFO if up else logging.WARNING,
                "backplane %r %s",
                self._name,
                "connected" if up else "lost: reconnecting",
            )
            if self._on_state is not None:
                self._on_state(up)

    async def _read(self, ready: asyncio.Future[None] | None = None) -> None:
        """One subscribing connection, from subscribe to its loss."""
        pubsub = self._client.pubsub()
        prefix = len(self._prefix)
        try:
            await pubsub.subscribe(*(self._prefix + channel for channel in self._channels))
            self._pubsub = pubsub
            self._was_up = True
            self._set_up(True)
            if ready is not None:
                ready.set_result(None)
            on_message = self._on_message
            assert on_message is not None
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                channel = message["channel"]
                data = message["data"]
                if isinstance(channel, bytes) and isinstance(data, bytes):
                    try:
                        on_message(channel[prefix:].decode(), data)
                    except Exception:  # a bug, never the message: keep reading
                        logger.exception("backplane message handler failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ready is not None and not ready.done():
                ready.set_exception(BackplaneError(f"cannot reach Redis: {exc}"))
            else:
                logger.debug("backplane subscription lost: %r", exc)
        finally:
            self._pubsub = None
            self._set_up(False)
            with contextlib.suppress(BaseException):
                await asyncio.shield(pubsub.aclose())

    async def _supervise(self) -> None:
        """Start a new subscribing connection whenever the last one ends."""
        delay = 0.05
        while True:
            reader = self._reader
            assert reader is not None
            await asyncio.wait({reader})
            if self._closing:
                return
            if reader.cancelled() or self._was_up:
                delay = 0.05  # kicked, or lost after working: try again at once
            else:
                delay = min(delay * 2, 2.0)
            self._was_up = False
            await asyncio.sleep(delay)
            self._reader = asyncio.create_task(self._read())

    # -- commands ---------------------------------------------------------------

    def _command_client(self) -> Any:
        if self._client is None or not self._up:
            raise BackplaneError(f"the backplane {self._name!r} is down (Redis unreachable)")
        return self._client

    async def _run(self, what: str, command: Any) -> Any:
        try:
            return await command
        except BackplaneError:
            raise
        except Exception as exc:
            raise BackplaneError(f"Redis failed ({what}): {exc}") from exc

    async def publish(self, channel: str, data: bytes) -> int:
        self._command_client()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.append((self._prefix + channel, data, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_outbox())
        return await future

    async def _send_outbox(self) -> None:
        """
        Send what was published, in order, on one connection: what piles up
        while a round trip is under way goes in the next one, pipelined
        (64 calls in flight cost a few round trips, not 64).
        """
        while self._outbox:
            batch, self._outbox = self._outbox[:1000], self._outbox[1000:]
            try:
                client = self._command_client()
                if len(batch) == 1:
                    channel, data, _ = batch[0]
                    counts = [await client.publish(channel, data)]
                else:
                    pipe = client.pipeline(transaction=False)
                    for channel, data, _ in batch:
                        pipe.publish(channel, data)
                    counts = await pipe.execute()
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, BackplaneError)
                    else BackplaneError(f"Redis failed (PUBLISH): {exc}")
                )
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            else:
                for (_, _, future), count in zip(batch, counts, strict=True):
                    if not future.done():
                        future.set_result(int(count))

    async def claim(self, key: str, value: str, ttl: float) -> bool:
        client = self._command_client()
        done = await self._run("SET", client.set(self._prefix + key, value, nx=True, px=_ms(ttl)))
        return bool(done)

    async def renew(self, key: str, value: str, ttl: float) -> int:
        self._command_client()
        result = await self._run(
            "renew", self._scripts["renew"](keys=[self._prefix + key], args=[value, _ms(ttl)])
        )
        return int(result)

    async def release(self, key: str, value: str) -> None:
        self._command_client()
        await self._run(
            "release", self._scripts["release"](keys=[self._prefix + key], args=[value])
        )

    async def get(self, key: str) -> str | None:
        client = self._command_client()
        value = await self._run("GET", client.get(self._prefix + key))
        return None if value is None else bytes(value).decode(errors="replace")

    async def update_sets(
        self, added: dict[str, set[str]], removed: dict[str, set[str]], ttl: float
    ) -> None:
        if not added and not removed:
            return
        client = self._command_client()
        pipe = client.pipeline(transaction=False)
        for key, values in removed.items():
            if values:
                pipe.srem(self._prefix + key, *values)
        for key, values in added.items():
            if values:
                pipe.sadd(self._prefix + key, *values)
                pipe.pexpire(self._prefix + key, _ms(ttl))
        await self._run("pipeline", pipe.execute())

    async def members(self, key: str) -> set[str]:
        client = self._command_client()
        values = await self._run("SMEMBERS", client.smembers(self._prefix + key))
        return {bytes(value).decode(errors="replace") for value in values}

    async def expire(self, keys: Iterable[str], ttl: float) -> None:
        keys = list(keys)
        if not keys:
            return
        client = self._command_client()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pexpire(self._prefix + key, _ms(ttl))
        await self._run("pipeline", pipe.execute())

    async def delete(self, keys: Iterable[str]) -> None:
        keys = [self._prefix + key for key in keys]
        if keys:
            client = self._command_client()
            await self._run("DEL", client.delete(*keys))
