"""A plain-TCP to TLS forwarder, so that a client without TLS (the Autobahn
runner) can test the server's TLS path: each connection accepted here is
carried over a new TLS connection to the server, which must present a
certificate signed by CA (verified, with its name).

Usage: python3 scripts/tls_forward.py HOST:PORT CA.pem
Prints the port it listens on (127.0.0.1), then forwards until killed.
"""

import asyncio
import ssl
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(target: str, ca: str) -> None:
    host, port = target.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port), ssl=context)
        except (OSError, ssl.SSLError) as err:
            print(f"tls_forward: cannot reach {target}: {err}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
