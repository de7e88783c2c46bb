#!/usr/bin/env python3
"""Server RSS per idle chat member, plain or over TLS.

Usage: bench/tls_memory.py PORT N SERVER_PID plain|tls [CA.pem]   (see BENCHMARKS.md)
"""
import socket, ssl, sys, time
port, n, pid, tls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "tls"
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
ctx = ssl.create_default_context(cafile=sys.argv[5] if len(sys.argv) > 5 else "cert.pem")
before = rss(); conns = []
req = b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls: s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(req); data = b""
    while b"\r\n\r\n" not in data: data += s.recv(4096)
    conns.append(s)
time.sleep(1)
after = rss()
print(f"{'tls' if tls else 'plain'}: {n} chat members, {(after-before)/n:.2f} KiB per connection")
