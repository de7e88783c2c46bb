#!/usr/bin/env python3
"""Server CPU per message, plain or over TLS: echo (one connection, messages
pipelined in batches) and broadcast (one sender, MEMBERS members of a room).
The server's own CPU (utime + stime from /proc/PID/stat) is what counts, so
the client being Python (and slow) does not matter for the figure.

Usage:
  bench/tls_cpu.py echo      PORT SERVER_PID plain|tls [CA.pem]
  bench/tls_cpu.py broadcast PORT SERVER_PID plain|tls [CA.pem]

Run the server with --rate-limit 0 (and --tls-cert/--tls-key for tls). See BENCHMARKS.md.
"""

import os
import selectors
import socket
import ssl
import sys
import time

# Echo sends more: one delivery per message, against fifty.
MESSAGES = {"echo": 2_000_000, "broadcast": 100_000}
BATCH, SIZE, MEMBERS = 100, 64, 50


def ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def connect(port, path, context):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + key + masked


class Reader:
    """Counts the server's frames on one connection."""

    def __init__(self, sock):
        self.sock, self.buf, self.frames = sock, bytearray(), 0

    def pump(self):
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        self.buf += data
        while len(self.buf) >= 2:
            n, start = self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, start = int.from_bytes(self.buf[2:4], "big"), 4
            if len(self.buf) < start + n:
                return
            del self.buf[: start + n]
            self.frames += 1


def run(mode, port, pid, context):
    payload = os.urandom(SIZE // 2).hex().encode()
    members = MEMBERS if mode == "broadcast" else 1
    path = "/chat?room=bench" if mode == "broadcast" else "/echo"
    socks = [connect(port, path, context) for _ in range(members)]
    readers = [Reader(s) for s in socks]
    selector = selectors.DefaultSelector()
    for r in readers:
        r.sock.setblocking(False)
        selector.register(r.sock, selectors.EVENT_READ, r)
    # Let welcomes and joins arrive, then count from zero.
    time.sleep(0.5)
    while any(selector.select(0.1)):
        for key, _ in selector.select(0):
            key.data.pump()
    for r in readers:
        r.frames = 0
    sender = socks[0]
    t0, w0 = ticks(pid), time.monotonic()
    sent = 0
    while sent < MESSAGES[mode]:
        sender.setblocking(True)
        sender.sendall(frame(payload) * BATCH)
        sender.setblocking(False)
        sent += BATCH
        while min(r.frames for r in readers) < sent:
            for key, _ in selector.select(5):
                key.data.pump()
    t1, w1 = ticks(pid), time.monotonic()
    deliveries = sum(r.frames for r in readers)
    cpu_ns = (t1 - t0) * 1e9 / os.sysconf("SC_CLK_TCK")
    per = cpu_ns / deliveries
    label = "tls" if context else "plain"
    print(
        f"{mode} {label}: {deliveries} deliveries ({sent} sent, {members} members) in {w1 - w0:.1f} s; "
        f"server CPU {cpu_ns / 1e6:.0f} ms, {per:.0f} ns per delivery"
    )


if __name__ == "__main__":
    mode, port, pid, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ctx = None
    if kind == "tls":
        ctx = ssl.create_default_context(cafile=sys.argv[5] if len(sys.argv) > 5 else "cert.pem")
    run(mode, port, pid, ctx)
