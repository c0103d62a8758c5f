#!/usr/bin/env python3
"""Sidecar latency: one SMTP session sends N messages; for each, the time from the client's
end-of-data (CRLF.CRLF written) to the server's 250 reply is measured. Prints p50/p90/p99/max.

usage: latency.py HOST:PORT [-n 2000] [-l 4096] [--warmup 100]
"""
import argparse, socket, statistics, time


def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line[3:4] != b"-":
            return line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-l", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=100)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO bench.test\r\n")
    reply(f)
    body = b"".join(b"x" * 62 + b"\r\n" for _ in range(max(1, a.l // 64)))
    samples = []
    for i in range(a.warmup + a.n):
        head = (f"From: app@src.test\r\nTo: user@dest.test\r\nSubject: latency {i}\r\n"
                f"Message-ID: <lat{i}.{time.time_ns()}@src.test>\r\n\r\n").encode()
        s.sendall(b"MAIL FROM:<app@src.test>\r\nRCPT TO:<user@dest.test>\r\nDATA\r\n")
        for _ in range(3):
            r = reply(f)
        if not r.startswith(b"354"):
            raise SystemExit(f"unexpected {r!r}")
        s.sendall(head + body)
        t0 = time.perf_counter()
        s.sendall(b".\r\n")
        r = reply(f)
        t1 = time.perf_counter()
        if not r.startswith(b"250"):
            raise SystemExit(f"unexpected {r!r}")
        if i >= a.warmup:
            samples.append((t1 - t0) * 1000)
    s.sendall(b"QUIT\r\n")
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]
    print(f"end-of-DATA -> 250 over {len(samples)} messages of {len(body)} body bytes: "
          f"p50 {q(0.5):.2f} ms, p90 {q(0.9):.2f} ms, p99 {q(0.99):.2f} ms, "
          f"max {samples[-1]:.2f} ms, mean {statistics.mean(samples):.2f} ms")


if __name__ == "__main__":
    main()
