#!/usr/bin/env python3
"""Memory of a running relay process (VmRSS now, VmHWM peak), under two loads:

  idle     N inbound connections that said EHLO and then sit idle
  bigsplit one message of SIZE MiB whose To: shows R addresses, split into R copies

usage: memory.py PID HOST:PORT idle [-n 1000]
       memory.py PID HOST:PORT bigsplit [--size 25] [-r 100]
"""
import argparse, socket, time


def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line[3:4] != b"-":
            return line


def idle(a, host, port):
    before = status(a.pid)
    socks = []
    for _ in range(a.n):
        s = socket.create_connection((host, port))
        f = s.makefile("rb")
        reply(f)
        s.sendall(b"EHLO idle.test\r\n")
        reply(f)
        socks.append((s, f))
    time.sleep(1)
    now = status(a.pid)
    print(f"{a.n} idle connections: RSS {now['VmRSS'] / 1024:.1f} MiB "
          f"(before {before['VmRSS'] / 1024:.1f} MiB), peak {now['VmHWM'] / 1024:.1f} MiB")
    for s, _ in socks:
        s.close()


def bigsplit(a, host, port):
    before = status(a.pid)
    rcpts = [f"user{i}@dest.test" for i in range(a.r)]
    s = socket.create_connection((host, port))
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO big.test\r\n")
    reply(f)
    s.sendall(b"MAIL FROM:<app@src.test>\r\n")
    reply(f)
    for r in rcpts:
        s.sendall(f"RCPT TO:<{r}>\r\n".encode())
        reply(f)
    s.sendall(b"DATA\r\n")
    reply(f)
    head = ("From: app@src.test\r\nTo: " + ", ".join(rcpts) +
            "\r\nSubject: big\r\nMessage-ID: <big@src.test>\r\n\r\n").encode()
    s.sendall(head)
    line = b"y" * 998 + b"\r\n"
    for _ in range(a.size * 1024 * 1024 // len(line)):
        s.sendall(line)
    s.sendall(b".\r\n")
    r = reply(f)
    print("end of DATA:", r.decode().strip())
    s.sendall(b"QUIT\r\n")
    s.close()
    time.sleep(a.settle)
    now = status(a.pid)
    print(f"{a.size} MiB message split to {a.r}: peak RSS {now['VmHWM'] / 1024:.1f} MiB "
          f"(before {before['VmHWM'] / 1024:.1f} MiB peak, {before['VmRSS'] / 1024:.1f} MiB RSS)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("addr")
    ap.add_argument("what", choices=["idle", "bigsplit"])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=25)
    ap.add_argument("-r", type=int, default=100)
    ap.add_argument("--settle", type=float, default=20)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    (idle if a.what == "idle" else bigsplit)(a, host, int(port))


if __name__ == "__main__":
    main()
