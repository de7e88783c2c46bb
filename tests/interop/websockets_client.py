"""Interop: Python's `websockets` library (not written here) talks to rust-chat
with permessage-deflate on, and both sides must agree it was negotiated.

Usage: python websockets_client.py ws://127.0.0.1:PORT
       python websockets_client.py wss://127.0.0.1:PORT CA.pem   (over TLS, trusting CA.pem)
"""

import asyncio
import json
import os
import ssl
import sys

from websockets.asyncio.client import connect


async def main(base: str, ca: str | None) -> None:
    tls = None
    if ca is not None:
        # Verifies the chain and the name, as a browser would.
        tls = ssl.create_default_context(cafile=ca)
    async with connect(base + "/echo", compression="deflate", max_size=2**24 + 2**16, ssl=tls) as ws:
        if tls is not None:
            assert ws.transport.get_extra_info("ssl_object").selected_alpn_protocol() in (None, "http/1.1")
        header = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert header.startswith("permessage-deflate"), f"server did not accept: {header!r}"
        names = [extension.name for extension in ws.protocol.extensions]
        assert names == ["permessage-deflate"], f"client did not agree: {names}"
        # Short (sent raw), long and compressible (sent compressed), non-ASCII, binary.
        for message in ["hi", "x" * 10_000, "κόσμε " * 500, bytes(range(256)) * 100, "y" * 300]:
            await ws.send(message)
            echoed = await ws.recv()
            assert echoed == message, f"echo differs for a {type(message).__name__} of {len(message)}"
        # Just under the 16 MiB message limit, and incompressible: compressed,
        # its frame is longer than the message (and than 16 MiB - 4 KiB).
        big = os.urandom(2**24 - 4096)
        await ws.send(big)
        assert await ws.recv() == big, "the 16 MiB - 4 KiB message did not come back whole"
        # A fragmented compressed message.
        await ws.send(["part one, " * 50, "part two, " * 50, "the end"])
        assert await ws.recv() == "part one, " * 50 + "part two, " * 50 + "the end"

    async with connect(base + "/chat?nick=python&room=interop", compression="deflate", ssl=tls) as ws:
        welcome = json.loads(await ws.recv())
        assert (welcome["type"], welcome["nick"], welcome["room"]) == ("welcome", "python", "interop"), welcome
        text = "hello from python " * 40
        await ws.send(text)
        event = json.loads(await ws.recv())
        assert (event["type"], event["text"], event["seq"]) == ("message", text, 1), event

    print(f"interop ok: {header}" + (f" over {ws.transport.get_extra_info('ssl_object').version()}" if tls else ""))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
