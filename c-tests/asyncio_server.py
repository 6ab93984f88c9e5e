"""asyncio_server.py - an event-loop runtime under checkpoint/restart (issue 12): a Python
asyncio TCP server on 127.0.0.1 (port chosen by the kernel) that answers each line with
"count N LINE", N being a counter a periodic task advances every 20 ms. Prints "port P" and
READY; when $CR_TEST_GO exists it prints "PASS asyncio_server N" and exits 0."""
import asyncio
import os
import sys

count = 0


async def serve(reader, writer):
    while line := await reader.readline():
        writer.write(f"count {count} {line.decode().strip()}\n".encode())
        await writer.drain()
    writer.close()


async def main():
    global count
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    print("READY", flush=True)
    go = os.environ["CR_TEST_GO"]
    while not os.path.exists(go):
        await asyncio.sleep(0.02)
        count += 1
    print(f"PASS asyncio_server {count}", flush=True)
    server.close()


sys.exit(asyncio.run(main()))
