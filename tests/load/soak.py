#!/usr/bin/env python3
"""Soak test: mixed /embed, /rerank, /generate (plain and streamed) at and past
saturation against one gritserve on loopback, bounded in time and requests.

Starts the server itself (a generated checkpoint of the given preset), warms
it up, then runs CLIENTS threads for DURATION seconds. Some clients abandon
their streams midway (disconnects). Records status counts and latency
percentiles per route, and the server's resident memory over time. Exits 1
when a response is a 5xx other than 503, or anything but 200/429/503 comes
back, or RSS at the end is more than 10% over RSS after warm-up.

  python3 tests/load/soak.py --binary build/gritserve --preset qwen2.5-0.5b \
      --duration 600 --clients 12 --out soak.json
Only loopback addresses are used.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

WORDS = ("the quick brown fox jumps over a lazy dog while rain falls on quiet "
         "streets and servers answer questions about documents").split()


def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return -1


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {}  # route -> [seconds]
        self.status = {}  # route -> {status: count}
        self.errors = []  # unexpected outcomes, a sample

    def add(self, route, status, seconds):
        with self.lock:
            self.status.setdefault(route, {}).setdefault(str(status), 0)
            self.status[route][str(status)] += 1
            if status == 200:
                self.latency.setdefault(route, []).append(seconds)
            if status not in (200, 429, 503) and len(self.errors) < 20:
                self.errors.append((route, status))


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def request(conn, path, body, stream=False, abandon_after=None):
    """POSTs body; returns the status. A stream is read to its end, or
    abandoned after `abandon_after` events (the connection is then closed)."""
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    if not stream or res.status != 200:
        res.read()
        return res.status, False
    events = 0
    while True:
        line = res.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            events += 1
            if line.strip() == b"data: [DONE]":
                res.read()  # the chunked body's end, so the connection can be reused
                break
            if abandon_after is not None and events >= abandon_after:
                conn.close()
                return res.status, True
    return res.status, False


def client(port, seed, deadline, stats, max_requests):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    done = 0
    while time.time() < deadline and done < max_requests:
        kind = rng.random()
        if kind < 0.35:
            route, body, stream = "/embed", {"inputs": [text(rng, rng.randint(8, 100))
                                                        for _ in range(rng.randint(1, 4))]}, False
        elif kind < 0.55:
            route, body, stream = "/rerank", {"query": text(rng, 8),
                                              "texts": [text(rng, 40) for _ in range(4)]}, False
        elif kind < 0.8:
            route, body, stream = "/generate", {"prompt": text(rng, 20), "max_tokens": 16,
                                                "temperature": 0.7, "top_p": 0.9}, False
        else:
            route, body, stream = "/generate(stream)", {"prompt": text(rng, 20),
                                                        "max_tokens": 16, "stream": True}, True
        path = route.replace("(stream)", "")
        abandon = rng.randint(1, 4) if stream and rng.random() < 0.25 else None
        t0 = time.time()
        try:
            status, abandoned = request(conn, path, body, stream, abandon)
            if abandoned:
                stats.add(route + "(abandoned)", 200, time.time() - t0)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            else:
                stats.add(route, status, time.time() - t0)
            if status == 429:  # as a polite client would: back off a little, then retry
                time.sleep(rng.uniform(0.05, 0.2))
        except (OSError, http.client.HTTPException) as e:
            stats.add(route, "conn:" + type(e).__name__, time.time() - t0)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        done += 1
    conn.close()


def start_server(args, workdir):
    ckpt = os.path.join(workdir, "model")
    subprocess.run([args.binary, "make-checkpoint", "--preset", args.preset, "--dtype", "bf16",
                    "--out", ckpt], check=True, stdout=subprocess.DEVNULL)
    log = open(os.path.join(workdir, "server.log"), "w+")
    cmd = [args.binary, "--model", ckpt, "--port", "0",
           "--max-concurrent-requests", str(args.max_concurrent)] + args.server_args
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        log.seek(0)
        m = re.search(r"ready: model .* on http://127\.0\.0\.1:(\d+)", log.read())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    log.seek(0)
    sys.exit("server did not start:\n" + log.read()[-3000:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="build/gritserve")
    ap.add_argument("--preset", default="qwen2.5-0.5b")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--max-concurrent", type=int, default=8,
                    help="the server's --max-concurrent-requests (below --clients: past saturation)")
    ap.add_argument("--max-requests", type=int, default=100000, help="per client")
    ap.add_argument("--out", default="")
    ap.add_argument("server_args", nargs="*", help="more server flags, after --")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="gritserve-soak-")
    proc, port = start_server(args, workdir)
    try:
        warm = Stats()
        end = time.time() + args.warmup
        threads = [threading.Thread(target=client, args=(port, 1000 + i, end, warm, 10 ** 9))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_warm = rss_bytes(proc.pid)

        stats = Stats()
        t_start = time.time()
        end = t_start + args.duration
        threads = [threading.Thread(target=client, args=(port, i, end, stats, args.max_requests))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        rss = [(0.0, rss_warm)]
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            rss.append((round(time.time() - t_start, 1), rss_bytes(proc.pid)))
        for t in threads:
            t.join()
        time.sleep(2)
        rss_end = rss_bytes(proc.pid)
        rss.append((round(time.time() - t_start, 1), rss_end))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9

    report = {
        "preset": args.preset, "duration_s": args.duration, "clients": args.clients,
        "max_concurrent_requests": args.max_concurrent,
        "requests": sum(sum(c.values()) for c in stats.status.values()),
        "status_counts": stats.status,
        "latency_s": {r: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                      for r, v in sorted(stats.latency.items())},
        "rss_after_warmup_bytes": rss_warm, "rss_end_bytes": rss_end,
        "rss_growth": (rss_end - rss_warm) / rss_warm,
        "rss_over_time": rss, "sigterm_exit_code": code,
        "unexpected": stats.errors,
    }
    text_out = json.dumps(report, indent=1)
    print(text_out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text_out + "\n")
    bad = stats.errors or report["rss_growth"] > 0.10 or code != 0
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
