"""redis-py with its default settings against msglog: the checks of tests/redis_clients.rs.

Protocol with the test: MSGLOG_PORT names the server; the script prints `restart` and
waits for a line on stdin once the server is to be restarted, and prints `ok` when done.
Any failure raises (non-zero exit, traceback on stderr).
"""

import os
import sys
import threading
import time

import redis

HOST, PORT = "127.0.0.1", int(os.environ["MSGLOG_PORT"])


def main():
    r = redis.Redis(host=HOST, port=PORT)  # defaults: RESP3 (HELLO 3), retries, a pool
    assert r.ping() is True
    assert r.client_info()["resp"] == "3", "redis-py negotiated RESP3 by default"

    binary = bytes(range(256)) + b"\r\n"
    assert r.set(b"py:bin\xff", binary) is True
    assert r.get(b"py:bin\xff") == binary
    r.set("py:a", "1")
    r.set("py:b", "2")
    assert r.mget("py:a", "py:missing", "py:b") == [b"1", None, b"2"]

    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"py:p{i}", str(i))
    assert pipe.execute() == [True] * 1000
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.get(f"py:p{i}")
    assert pipe.execute() == [str(i).encode() for i in range(1000)]

    # The default pipeline is a MULTI/EXEC transaction; a reader must never see half of one.
    r.mset({"py:left": "0", "py:right": "0"})
    stop, torn = threading.Event(), []

    def read():
        reader = redis.Redis(host=HOST, port=PORT)
        while not stop.is_set():
            left, right = reader.mget("py:left", "py:right")
            if left != right:
                torn.append((left, right))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 201):
        with r.pipeline() as tx:
            tx.set("py:left", str(i))
            tx.get("py:left")
            tx.set("py:right", str(i))
            assert tx.execute() == [True, str(i).encode(), True]
    stop.set()
    reader.join()
    assert not torn, f"a reader saw half a transaction: {torn[:3]}"
    assert r.mget("py:left", "py:right") == [b"200", b"200"]

    # A pool of 20 connections used by 20 threads at once.
    pool = redis.BlockingConnectionPool(host=HOST, port=PORT, max_connections=20)
    barrier, failures = threading.Barrier(20), []

    def worker(n):
        try:
            client = redis.Redis(connection_pool=pool)
            barrier.wait(timeout=30)
            for i in range(50):
                client.set(f"py:pool{n}:{i}", f"{n}:{i}")
                assert client.get(f"py:pool{n}:{i}") == f"{n}:{i}".encode()
        except Exception as err:  # reported below, with the thread's number
            failures.append((n, repr(err)))

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures
    pool.disconnect()

    # The same client carries on after the server restarts on the same port.
    r.set("py:durable", "before restart")
    print("restart", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 30
    while True:
        try:
            value = r.get("py:durable")
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert value == b"before restart"
    assert r.set("py:after", "x") is True
    print("ok", flush=True)


main()
