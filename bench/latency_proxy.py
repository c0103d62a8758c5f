#!/usr/bin/env python3
"""A TCP proxy that puts distance between two programs on one machine (this kernel has no netem).

Every chunk read from either side is written to the other side D ms after it was read, in order;
reading never waits for writing, so data keeps flowing (a one-way delay, not a bandwidth limit).
Connections are independent of each other. The connection setup is delayed too: the connection to
the target is opened 3 x D after the client's connect (SYN, SYN-ACK and ACK each crossing the
distance), so a server's greeting reaches the client 4 x D (two round trips) after connect(), as
over a real link. A half-close (EOF) is passed on D ms later, in order with the data; a reset or
error on either side closes both.

usage: latency_proxy.py --listen 127.0.0.1:2647 --target 127.0.0.1:2646 --delay-ms 25
On SIGTERM/SIGINT it prints to stderr: connections accepted, the most open at once (accepted and
not yet closed or half-closed by the client), the client's flights (times it sent after having
heard from the server: the round trips it waited for, if it never sends without being answered
first; pipelined commands in one write count once) and bytes each way.
"""
import argparse, asyncio, signal, socket, sys

stats = {"accepted": 0, "open": 0, "peak": 0, "flights": 0, "up": 0, "down": 0}


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def pump(reader, writer, delay, counter, last, on_eof=None):
    """Copy reader -> writer (a future of the writer), releasing each chunk `delay` s after its read."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def release():
        out = await writer  # the target connection may still be opening
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:  # EOF: pass the half-close on
                if out.can_write_eof():
                    out.write_eof()
                return
            out.write(data)
            stats[counter] += len(data)
            await out.drain()

    sender = asyncio.ensure_future(release())
    try:
        while True:
            data = await reader.read(65536)
            if data and counter == "up" and last[0] != "up":
                stats["flights"] += 1  # the client speaks again after hearing from the server
            last[0] = counter
            queue.put_nowait((loop.time() + delay, data or None))
            if not data:
                if on_eof is not None:
                    on_eof()
                break
        await sender
    finally:
        sender.cancel()


async def handle(client_r, client_w, target, delay):
    stats["accepted"] += 1
    stats["open"] += 1
    stats["peak"] = max(stats["peak"], stats["open"])
    counted = [True]

    def closed():  # "open" counts connections the client has not closed yet
        if counted[0]:
            counted[0] = False
            stats["open"] -= 1

    last = ["down"]
    nodelay(client_w)
    loop = asyncio.get_running_loop()
    target_w = loop.create_future()
    client = loop.create_future()
    client.set_result(client_w)
    # the client's bytes are read (and timed) from now on; they go out once the target is connected
    up = asyncio.ensure_future(pump(client_r, target_w, delay, "up", last, closed))
    tasks = {up}
    try:
        await asyncio.sleep(3 * delay)  # SYN, SYN-ACK, ACK crossing the distance
        target_r, w = await asyncio.open_connection(*target)
        nodelay(w)
        target_w.set_result(w)
        tasks.add(asyncio.ensure_future(pump(target_r, client, delay, "down", last)))
        while tasks:  # until both directions ended (half-closes), or one failed
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() for t in done):
                break
    except OSError:  # the target refused: close the client
        pass
    finally:
        for t in tasks:
            t.cancel()
        closed()
        client_w.close()
        if target_w.done() and not target_w.cancelled():
            target_w.result().close()


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, type=addr, help="HOST:PORT to accept on")
    ap.add_argument("--target", required=True, type=addr, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (default 25)")
    a = ap.parse_args()
    delay = a.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, a.target, delay), *a.listen, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"latency_proxy: listening on {a.listen[0]}:{a.listen[1]} -> {a.target[0]}:{a.target[1]}, "
          f"{a.delay_ms:g} ms each way", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()  # open connections are dropped with the event loop
    print(f"latency_proxy: connections={stats['accepted']} peak_open={stats['peak']} "
          f"client_flights={stats['flights']} bytes_up={stats['up']} bytes_down={stats['down']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
