"""Memory per connection, by what the connections hold: the numbers behind
README's "Memory per connection" table.

    target/interop-venv/bin/python bench/memory.py [N]

Starts target/release/rust-chat itself (on a free port, --rate-limit 0 unless
a case needs the limit), opens N connections of each kind in turn, and prints
the growth of the server's resident memory (VmRSS) per connection. Bounded:
N connections per case (default 1000), a few seconds each, loopback only.
"""
import asyncio, os, re, socket, subprocess, sys, time
import websockets

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
BINARY = os.path.join(os.path.dirname(__file__), "..", "target", "release", "rust-chat")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start(*args):
    proc = subprocess.Popen([BINARY, "--bind", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    url = re.search(r"ws://[^/]+", proc.stdout.readline()).group(0)
    return proc, url


async def settle(pid):
    await asyncio.sleep(1.0)
    return rss_kib(pid)


def raw_upgrade(host, port, path):
    s = socket.create_connection((host, port))
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    return s


def masked(payload, opcode=1, fin=True, declared=None):
    n = len(payload) if declared is None else declared
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def case(name, args, opener):
    proc, url = start(*args)
    try:
        base = await settle(proc.pid)
        held = await opener(url)
        after = await settle(proc.pid)
        print(f"{name:58} {(after - base) / N:8.2f} KiB/conn  (RSS {base} -> {after} KiB, {N} conns)")
    finally:
        proc.kill()
        proc.wait()


async def chat_members(url, compression):
    conns = []
    for i in range(N):
        ws = await websockets.connect(url + "/chat?room=r%d" % (i % 500), compression=compression,
                                      max_size=None, ping_interval=None)
        await ws.recv()
        conns.append(ws)
    return conns


async def chat_members_who_spoke(url):
    # Every member sends one (compressed) message: its inflater now exists.
    conns = await chat_members(url, "deflate")
    for ws in conns:
        await ws.send("hello " * 60)
    await asyncio.sleep(0.5)
    return conns


def host_port(url):
    host, port = url[len("ws://"):].split(":")
    return host, int(port)


async def echo_half_messages(url, size):
    host, port = host_port(url)
    socks = []
    for _ in range(N):
        s = raw_upgrade(host, port, "/echo")
        # The header declares `size`; only 64 KiB of the payload follows.
        frame = masked(b"x" * (64 << 10), opcode=2, declared=size)
        s.sendall(frame)
        socks.append(s)
    return socks


async def throttled(url):
    # Members over the rate (1 a second, burst 1) each send 64 KiB of small
    # messages at once: the server holds what it read while it waits.
    host, port = host_port(url)
    socks = []
    burst = b"".join(masked(b"m" * 100) for _ in range(600))
    for _ in range(N):
        s = raw_upgrade(host, port, "/chat")
        s.sendall(burst)
        socks.append(s)
    await asyncio.sleep(0.5)
    return socks


async def main():
    await case("chat member, idle, no compression", ["--rate-limit", "0"],
               lambda url: chat_members(url, None))
    await case("chat member, compression agreed, has not sent", ["--rate-limit", "0"],
               lambda url: chat_members(url, "deflate"))
    await case("chat member, compression agreed, has sent (inflater)", ["--rate-limit", "0"],
               chat_members_who_spoke)
    await case("echo, 200 KiB message under way (64 KiB arrived)", ["--rate-limit", "0"],
               lambda url: echo_half_messages(url, 200 << 10))
    # 1,000 x 1 MiB would be 1,000 MiB held: past 256 MiB (--max-buffered-bytes) the newest get 1013.
    await case("echo, 1 MiB message under way, past the server-wide bound", ["--rate-limit", "0"],
               lambda url: echo_half_messages(url, 1 << 20))
    await case("chat member throttled with 60 KiB unread", ["--rate-limit", "1", "--rate-burst", "1"],
               throttled)


asyncio.run(main())
