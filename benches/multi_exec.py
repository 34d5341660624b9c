#!/usr/bin/env python3
"""Round trips of 10 SETs: as a MULTI/EXEC transaction, or as 10 plain pipelined SETs.

    benches/multi_exec.py PORT MODE [connections=50] [seconds=5] [sets=10]

MODE is `multi` (MULTI, SET x10, EXEC in one write, then all 12 replies) or `pipeline`
(SET x10 in one write, then 10 replies); each connection has one round trip in flight.
Prints `mode,sets_per_second,round_trips_per_second`. Raw sockets and asyncio, so the
client costs the same against any server; 100-byte values, keys over 100,000 IDs.
"""

import asyncio
import random
import sys
import time


def request(*args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


async def client(port, mode, sets, until, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    value = b"v" * 100
    # Replies, byte for byte: one +OK per SET, or +OK, +QUEUED x n, then *n of +OK.
    if mode == "multi":
        expected = b"+OK\r\n" + b"+QUEUED\r\n" * sets + b"*%d\r\n" % sets + b"+OK\r\n" * sets
    else:
        expected = b"+OK\r\n" * sets
    while time.monotonic() < until:
        keys = [b"key:%d" % random.randrange(100_000) for _ in range(sets)]
        body = b"".join(request(b"SET", key, value) for key in keys)
        if mode == "multi":
            body = request(b"MULTI") + body + request(b"EXEC")
        writer.write(body)
        got = await reader.readexactly(len(expected))
        if got != expected:
            raise SystemExit(f"unexpected reply: {got[:200]!r}")
        counts[0] += 1
    writer.close()


async def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    sets = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    counts = [0]
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(*(client(port, mode, sets, until, counts) for _ in range(connections)))
    elapsed = time.monotonic() - start
    print(f"{mode},{counts[0] * sets / elapsed:.0f},{counts[0] / elapsed:.0f}")


asyncio.run(main())
