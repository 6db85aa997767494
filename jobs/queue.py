"""The job queue, consumed reliably: a claimed message stays in the worker's own processing list until acked.

Two implementations share one protocol: `RedisQueue` (the reference's lists `sdxl_queue` /
`wan_queue`, `LPUSH` to produce, `BLMOVE` into `ourvidz:processing:{worker}` to consume, a heartbeat
key with a TTL) and `TableQueue` (a table in the store, for the Redis-free setups). The store stays
the source of truth: a lost message delays a job, and the sweeper re-pushes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from jobs import keys


class QueueUnavailable(Exception):
    """The queue's server cannot be reached; the caller answers 503 or retries later."""


class Queue(Protocol):
    """What producers, workers and the sweeper need of a queue."""

    async def ping(self) -> None: ...

    async def push(self, queue: str, payload: str) -> int:
        """Append a message at the tail that consumers take last; returns the queue's new depth."""
        ...

    async def push_front(self, queue: str, payload: str) -> None:
        """Put a message where it is consumed next (a job handed back)."""
        ...

    async def depth(self, queue: str) -> int: ...

    async def claim(self, queues: list[str], worker_id: str, timeout: float) -> str | None:
        """Move the oldest message of the first non-empty queue into the worker's processing list."""
        ...

    async def ack(self, worker_id: str, payload: str) -> None:
        """Remove a message from the worker's processing list: its job reached a terminal state."""
        ...

    async def heartbeat(self, worker_id: str, queues: list[str], ttl: float) -> None: ...

    async def retire(self, worker_id: str) -> None:
        """A worker that stops cleanly: its heartbeat goes, so nothing waits for its TTL."""
        ...

    async def live_workers(self) -> list[str]: ...

    async def dead_workers(self) -> list[str]:
        """Workers whose heartbeat expired but whose processing list may still hold messages."""
        ...

    async def held(self, worker_id: str) -> list[str]: ...

    def stashed(self, worker_id: str) -> list[str]:
        """Messages a claim already moved into this worker's processing list, for a later claim to return."""
        ...

    async def forget(self, worker_id: str) -> None:
        """Drop a dead worker's registration once its messages were dealt with."""
        ...

    async def job_ids(self) -> set[str]:
        """Every job id that a queue or a processing list holds, read at one instant."""
        ...

    async def pushed(self) -> dict[str, float]:
        """When each job's message was last pushed (Unix seconds), as far as the queue still knows: a message
        taken by a consumer that keeps no processing list (an old worker's `RPOP`) is in no list, but here."""
        ...

    async def aclose(self) -> None: ...


def job_id_of(payload: str) -> str | None:
    """The `id` of a queue message, or None for a message that is not ours to read."""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    job_id = value.get("id") if isinstance(value, dict) else None
    return job_id if isinstance(job_id, str) else None


class _Blocker:
    """A connection of its own for one blocking BLMOVE at a time, with its CLIENT ID for unblocking."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.client_id: int | None = None

    async def open(self) -> None:
        await self.connection.connect()
        await self.connection.send_command("CLIENT", "ID")
        self.client_id = int(await self.connection.read_response())

    async def blmove(self, queue: str, target: str, wait: float) -> str | None:
        await self.connection.send_command("BLMOVE", queue, target, "RIGHT", "LEFT", max(wait, 0.01))
        moved = await self.connection.read_response()
        return None if moved is None else str(moved)

    async def close(self) -> None:
        await self.connection.disconnect()


class RedisQueue:
    """The reference's Redis lists, consumed with the reliable-queue pattern."""

    # How long a push is remembered (see `push`): longer than any job waits in a queue before it times out.
    PUSHED_RETENTION = 86400.0

    def __init__(self, client: aioredis.Redis, queues: Iterable[str]) -> None:
        self._redis = client
        self._queues = list(queues)
        # A worker of several queues blocks on all of them at once, one connection each (see `_blmove_any`).
        self._blockers: list[_Blocker | None] = []
        # Messages a multi-queue claim moved beyond the one it returned: already in the processing list.
        self._stash: dict[str, list[str]] = {}
        # Each worker's last heartbeat (its queues and TTL in ms), so that a claim can renew it (see `_register`).
        self._beats: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_url(cls, url: str, queues: Iterable[str]) -> RedisQueue:
        # A burst of requests waits for a free connection (up to `timeout`) instead of failing at the
        # pool's limit with "Too many connections", which would answer 503 while Redis is fine.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=10.0,
            health_check_interval=15, retry_on_timeout=False, max_connections=200, timeout=10.0,
        )
        return cls(aioredis.Redis.from_pool(pool), queues)

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        """One Redis round trip: its errors become QueueUnavailable, and a cancellation stays a cancellation.

        redis-py can swallow a cancellation that lands mid-command: the command returns its reply, or raises
        a connection error, as if nothing had happened. A loop that goes on after either (a heartbeat) then
        never stops. A cancellation requested while the call ran, and not withdrawn, is raised here.
        """
        task = asyncio.current_task()
        requested = task.cancelling() if task is not None else 0
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            if task is not None and task.cancelling() > requested:
                raise asyncio.CancelledError from exc
            raise QueueUnavailable(f"redis: {exc}") from exc
        if task is not None and task.cancelling() > requested:
            raise asyncio.CancelledError
        return result

    @staticmethod
    async def _execute(pipe: Pipeline) -> list[Any]:
        # Run inside `_call` with its reset on exit, which returns the connection and awaits too.
        async with pipe:
            return await pipe.execute()

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def push(self, queue: str, payload: str) -> int:
        return await self._pushed(queue, payload, front=False)

    async def push_front(self, queue: str, payload: str) -> None:
        await self._pushed(queue, payload, front=True)

    async def _pushed(self, queue: str, payload: str, *, front: bool) -> int:
        """The push and its record in `ourvidz:pushed`, in one MULTI: lost together in a flush, or kept together.

        An old worker takes a message with `RPOP` and keeps no processing list, so until its callback the job
        is in no list; the record says its message was delivered, and the sweeper leaves it alone. After a
        flush (or a restart without persistence) the record is gone with the message, and the sweeper
        pushes the job again. Records older than PUSHED_RETENTION are dropped on the way.
        """
        now = time.time()  # not after the store's note of the push (edge_api/enqueue.py): see `pushed`
        pipe = self._redis.pipeline(transaction=True)
        (pipe.rpush if front else pipe.lpush)(queue, payload)
        job_id = job_id_of(payload)
        if job_id is not None:
            pipe.zadd(keys.PUSHED, {job_id: now})
        pipe.zremrangebyscore(keys.PUSHED, "-inf", now - self.PUSHED_RETENTION)
        return int((await self._call(self._execute(pipe)))[0])

    async def depth(self, queue: str) -> int:
        return int(await self._call(self._redis.llen(queue)))

    async def claim(self, queues: list[str], worker_id: str, timeout: float) -> str | None:
        target = keys.processing_list(worker_id)
        await self._register(worker_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if len(queues) == 1:
            # One BLMOVE must end before the client's socket timeout, or the client gives up while
            # Redis may still move a message into the processing list that nobody then reads.
            while True:
                wait = min(max(deadline - loop.time(), 0.0), self._longest_block())
                moved = await self._blmove(queues[0], target, wait)
                if moved is not None or loop.time() >= deadline:
                    return moved
        stash = self._stash.setdefault(target, [])
        while True:
            if stash:
                return stash.pop(0)
            for queue in queues:
                moved = await self._call(self._redis.lmove(queue, target, "RIGHT", "LEFT"))
                if moved is not None:
                    return str(moved)
            wait = min(max(deadline - loop.time(), 0.0), self._longest_block())
            stash.extend(await self._blmove_any(queues, target, wait))
            if not stash and loop.time() >= deadline:
                return None

    async def _blmove_any(self, queues: list[str], target: str, wait: float) -> list[str]:
        """Block on every queue at once, one connection each; the first message wins.

        The others are woken with CLIENT UNBLOCK, which makes a blocked BLMOVE return at once: with
        nothing, or with the message it had just moved (already safe in the processing list; it is
        returned by the next claim). So no message is ever in flight without its reply being read.
        """
        blockers = [await self._blocker(i) for i in range(len(queues))]
        tasks = [asyncio.create_task(blocker.blmove(queue, target, wait))
                 for blocker, queue in zip(blockers, queues, strict=True)]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for blocker, task in zip(blockers, tasks, strict=True):
                if task in pending and blocker.client_id is not None:
                    await self._call(self._redis.client_unblock(blocker.client_id))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                await self._drop_blocker(index)
        if errors and not any(isinstance(r, str) for r in results):
            raise QueueUnavailable(f"redis: {errors[0]}") from errors[0]
        return [r for r in results if isinstance(r, str)]

    async def _blocker(self, index: int) -> _Blocker:
        while len(self._blockers) <= index:
            self._blockers.append(None)
        blocker = self._blockers[index]
        if blocker is None:
            pool = self._redis.connection_pool
            blocker = _Blocker(pool.connection_class(**pool.connection_kwargs))
            try:
                await blocker.open()
            except (RedisError, OSError) as exc:
                raise QueueUnavailable(f"redis: {exc}") from exc
            self._blockers[index] = blocker
        return blocker

    async def _drop_blocker(self, index: int) -> None:
        blocker = self._blockers[index]
        self._blockers[index] = None
        if blocker is not None:
            await blocker.close()

    async def _register(self, worker_id: str) -> None:
        """Make the worker's processing list findable by the sweeper before it can hold anything.

        A worker that claims is alive: after Redis lost its data (a FLUSHALL, a restart without
        persistence) its registration must not come back without its heartbeat, or the sweeper takes it
        for dead in between and re-queues the job it is about to run, burning one of the job's tries.
        """
        beat = self._beats.get(worker_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(keys.WORKERS, worker_id)
        if beat is not None:
            pipe.set(keys.heartbeat(worker_id), beat[0], px=beat[1], nx=True)
        await self._call(self._execute(pipe))

    def _longest_block(self) -> float:
        """How long one blocking command may wait: well inside the client's socket timeout."""
        socket_timeout = self._redis.connection_pool.connection_kwargs.get("socket_timeout")
        return float("inf") if socket_timeout is None else max(float(socket_timeout) / 2, 0.01)

    async def _blmove(self, queue: str, target: str, timeout: float) -> str | None:
        # Redis takes fractional timeouts (6.0+); redis-py's stub says int.
        wait: Any = max(timeout, 0.01)
        moved = await self._call(self._redis.blmove(queue, target, wait, "RIGHT", "LEFT"))
        return None if moved is None else str(moved)

    async def ack(self, worker_id: str, payload: str) -> None:
        await self._call(self._redis.lrem(keys.processing_list(worker_id), 1, payload))

    async def heartbeat(self, worker_id: str, queues: list[str], ttl: float) -> None:
        self._beats[worker_id] = (",".join(queues), int(ttl * 1000))
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(keys.WORKERS, worker_id)
        pipe.set(keys.heartbeat(worker_id), ",".join(queues), px=int(ttl * 1000))
        await self._call(self._execute(pipe))

    async def retire(self, worker_id: str) -> None:
        self._beats.pop(worker_id, None)
        await self._call(self._redis.delete(keys.heartbeat(worker_id)))

    async def live_workers(self) -> list[str]:
        members = sorted(await self._call(self._redis.smembers(keys.WORKERS)))
        if not members:
            return []
        alive = await self._call(self._redis.mget([keys.heartbeat(m) for m in members]))
        return [m for m, beat in zip(members, alive, strict=True) if beat is not None]

    async def dead_workers(self) -> list[str]:
        members = set(await self._call(self._redis.smembers(keys.WORKERS)))
        return sorted(members - set(await self.live_workers()))

    async def held(self, worker_id: str) -> list[str]:
        return [str(p) for p in await self._call(self._redis.lrange(keys.processing_list(worker_id), 0, -1))]

    def stashed(self, worker_id: str) -> list[str]:
        return list(self._stash.get(keys.processing_list(worker_id), []))

    async def forget(self, worker_id: str) -> None:
        # Only once the processing list is empty: a message still in it must not become unreachable.
        if await self._call(self._redis.llen(keys.processing_list(worker_id))) == 0:
            await self._call(self._redis.srem(keys.WORKERS, worker_id))

    async def job_ids(self) -> set[str]:
        workers = sorted(await self._call(self._redis.smembers(keys.WORKERS)))
        lists = self._queues + [keys.processing_list(w) for w in workers]
        # MULTI makes the reads one instant: a message moving between two lists is seen exactly once.
        pipe = self._redis.pipeline(transaction=True)
        for name in lists:
            pipe.lrange(name, 0, -1)
        results = await self._call(self._execute(pipe))
        ids = {job_id_of(str(p)) for payloads in results for p in payloads}
        ids.discard(None)
        return {i for i in ids if i is not None}

    async def pushed(self) -> dict[str, float]:
        return {str(job_id): float(at) for job_id, at in
                await self._call(self._redis.zrange(keys.PUSHED, 0, -1, withscores=True))}

    async def aclose(self) -> None:
        for index in range(len(self._blockers)):
            await self._drop_blocker(index)
        await self._redis.aclose()
