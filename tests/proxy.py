"""A TCP proxy between a client and a server (Redis, Postgres), which a test can cut or slow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from servers import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_port`. `cut()` drops every connection and refuses new ones
    (as a network partition does) until `restore()`; `delay` slows each chunk sent upstream."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = delay
        self.cuts = 0
        self._up = True
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))
        pumps = [asyncio.create_task(self._pump(reader, up_writer, self.delay)),
                 asyncio.create_task(self._pump(up_reader, writer, 0.0))]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._links.discard(w)
            w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        self._up = False
        self.cuts += 1
        for writer in list(self._links):
            transport = writer.transport
            transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self._up = True

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()


@contextlib.asynccontextmanager
async def tcp_proxy(target_port: int, delay: float = 0.0) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_port, delay)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
