#!/usr/bin/env python3
"""Failover time of cluster mode: how long writes stop when the leader is killed.

Starts a 3-node cluster (`msglog serve --cluster`, 127.0.0.1, ports from --base-port),
keeps one client per surviving node writing (SET, one at a time, through whichever node it
is connected to: a node that does not lead forwards), and `--rounds` times kills the leader
with SIGKILL (or stops it with SIGTERM with --sigterm), measures the time from the kill to
the first write acknowledged after it, and restarts the old leader. Prints each round and
the median/p99/max.

    benches/failover.py --rounds 50                 # SIGKILL of the leader, 50 rounds
    benches/failover.py --rounds 20 --sigterm       # controlled shutdown
"""
import argparse, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

def request(sock_file, sock, line):
    sock.sendall(line.encode() + b"\n")
    return sock_file.readline().decode().strip()

def stats(addr):
    try:
        with socket.create_connection(addr, timeout=1) as s:
            f = s.makefile("rb")
            return dict(p.split("=", 1) for p in request(f, s, "STATS").split() if "=" in p)
    except OSError:
        return {}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sigterm", action="store_true")
    ap.add_argument("--binary", default="target/release/msglog")
    ap.add_argument("--base-port", type=int, default=19000)
    ap.add_argument("--session-timeout", default="1500ms")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="failover.")
    names = ["a", "b", "c"]
    client = {n: ("127.0.0.1", args.base_port + i) for i, n in enumerate(names)}
    grpc = {n: ("127.0.0.1", args.base_port + 100 + i) for i, n in enumerate(names)}
    voters = ",".join(f"{n}=127.0.0.1:{grpc[n][1]}" for n in names)
    procs = {}

    def launch(n):
        log = open(os.path.join(work, f"{n}.log"), "ab")
        procs[n] = subprocess.Popen([args.binary, "serve", "--node-id", n, "--data-dir", os.path.join(work, n),
            "--listen", f"127.0.0.1:{client[n][1]}", "--grpc-listen", f"127.0.0.1:{grpc[n][1]}",
            "--cluster", voters, "--stats-interval", "0s", "--session-timeout", args.session_timeout],
            stdout=subprocess.DEVNULL, stderr=log)

    def leader(among):
        deadline = time.time() + 30
        while time.time() < deadline:
            views = {n: stats(client[n]) for n in among}
            leaders = [n for n, s in views.items() if s.get("leader") == "self"]
            if len(leaders) == 1 and len(views[leaders[0]].get("isr", "").split(",")) >= 2:
                return leaders[0]
            time.sleep(0.05)
        sys.exit("no leader within 30 s")

    acked = {}  # node -> (sent, acknowledged) times of the writes acknowledged
    stop = threading.Event()

    def writer(n):
        seq = 0
        while not stop.is_set():
            try:
                with socket.create_connection(client[n], timeout=5) as s:
                    f = s.makefile("rb")
                    while not stop.is_set():
                        seq += 1
                        sent = time.monotonic()
                        if request(f, s, f"SET k{n} {seq}") == "OK":
                            acked.setdefault(n, []).append((sent, time.monotonic()))
            except OSError:
                time.sleep(0.01)

    for n in names:
        launch(n)
    try:
        gaps = []
        for r in range(args.rounds):
            old = leader(names)
            survivors = [n for n in names if n != old]
            stop.clear()
            threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in survivors]
            for t in threads:
                t.start()
            time.sleep(0.5)
            killed = time.monotonic()
            procs[old].send_signal(signal.SIGTERM if args.sigterm else signal.SIGKILL)
            procs[old].wait()
            deadline = time.monotonic() + 30
            first = None
            while first is None and time.monotonic() < deadline:
                after = [done for n in survivors for sent, done in acked.get(n, []) if sent > killed]
                first = min(after) if after else None
                time.sleep(0.01)
            stop.set()
            for t in threads:
                t.join()
            if first is None:
                sys.exit(f"round {r}: no write acknowledged within 30 s of the kill")
            gaps.append(first - killed)
            print(f"round {r + 1}: leader {old} {'stopped' if args.sigterm else 'killed'}, "
                  f"writes resumed after {gaps[-1] * 1000:.0f} ms", flush=True)
            acked.clear()
            launch(old)
        gaps.sort()
        p99 = gaps[min(len(gaps) - 1, int(round(0.99 * (len(gaps) - 1))))]
        print(f"{len(gaps)} rounds: median {statistics.median(gaps) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {gaps[-1] * 1000:.0f} ms")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if args.keep:
            print(f"logs and data dirs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
