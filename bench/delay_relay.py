"""A TCP relay that delays every byte by a fixed time each way: a one-way link delay
where the kernel has no netem qdisc.

    python bench/delay_relay.py --listen 127.0.0.1:9192 --target superlink:9092 --delay-ms 50

Each accepted connection opens one to the target. What arrives from either side is stamped
with its arrival time and written to the other side no sooner than `delay` later, in order;
chunks that follow each other are not delayed again (a pipe, not a stop-and-wait link), so
a bulk transfer keeps the rate the shaped link allows and every request/response exchange
costs one extra round trip of 2 x delay. At most 256 KiB wait in each direction: beyond
that the relay stops reading, and its sender's TCP window closes, as on a real link. A side
that closes is closed on the other after its last delayed bytes. bench/shaped_links.py runs
one in each SuperNode's namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import time

CHUNK_BYTES = 16384
# Chunks a direction holds at most (256 KiB): the relay pushes back on its sender as a
# socket buffer does, instead of taking in a whole message that then queues every later
# request (a heartbeat) behind it. 256 KiB over 50 ms keeps up with 40 Mbit/s.
QUEUE_CHUNKS = 16


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy `reader` to `writer`, each chunk `delay` seconds after it arrived."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def read() -> None:
        while True:
            data = await reader.read(CHUNK_BYTES)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()  # half-close: the other direction goes on
                return
            writer.write(data)
            await writer.drain()
    except BaseException:
        writer.close()  # the other pump, reading this socket, then ends too
        raise
    finally:
        reading.cancel()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    """Accept on `listen` forever; relay each connection to `target` with `delay` seconds
    each way."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            pump(reader, up_writer, delay), pump(up_reader, writer, delay), return_exceptions=True
        )
        for side in (writer, up_writer):
            side.close()

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    """Parse the arguments and relay until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay, ms")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
