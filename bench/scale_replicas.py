#!/usr/bin/env python3
"""Load driver for bench/scale_replicas.sh (stdlib only).

Runs a fixed number of keep-alive connections, each POSTing the same /embed
batch in a loop, against nginx fronting one replica and nginx fronting two,
in interleaved rounds (1, 2, 1, 2, ...). Prints one JSON document.

Throughput: a single-thread replica answers its queued requests as one batch,
so responses arrive in bursts (one per batch), seconds apart for the 0.5B
shape. Counting completions inside a fixed window would be off by up to a
whole burst at each edge, so the rate is measured per replica from burst to
burst: the embeddings of every burst after the first one in the window,
divided by the time from the first burst to the last one. The plain window
count (embeddings completed in the window / window length) is reported too.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

TEXT = ("Large language models turn text into vectors that capture its meaning, "
        "so that a search engine can find passages that answer a question even "
        "when they share few words with it, which keyword search cannot.")
BURST_GAP_S = 0.05  # completions closer than this to the previous one: same batch


def metrics(hostport):
    conn = http.client.HTTPConnection(hostport, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {"embed_200": 0.0, "batch_inputs": 0.0, "batches": 0.0, "prompt_tokens": 0.0}
    for line in text.splitlines():
        if line.startswith('gritserve_requests_total{route="/embed",status="200"}'):
            out["embed_200"] = float(line.split()[-1])
        elif line.startswith("gritserve_embed_batch_inputs_total "):
            out["batch_inputs"] = float(line.split()[-1])
        elif line.startswith("gritserve_embed_batches_total "):
            out["batches"] = float(line.split()[-1])
        elif line.startswith("gritserve_prompt_tokens_total "):
            out["prompt_tokens"] = float(line.split()[-1])
    return out


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def client(port, body, t_stop, records, errors):
    conn = None
    while time.monotonic() < t_stop:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            t0 = time.monotonic()
            conn.request("POST", "/embed", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            t1 = time.monotonic()
            if resp.status != 200:
                errors.append(f"HTTP {resp.status}")
                continue
            records.append((t0, t1, resp.getheader("X-Gritserve-Upstream", "?")))
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.1)
    if conn is not None:
        conn.close()


def burst_rate(done_times, inputs):
    """Embeddings/s from the first burst of completions to the last one (None: too few)."""
    bursts = []  # [start time, completions]
    for t in sorted(done_times):
        if bursts and t - bursts[-1][2] <= BURST_GAP_S:
            bursts[-1][1] += 1
            bursts[-1][2] = t
        else:
            bursts.append([t, 1, t])
    if len(bursts) < 3:
        return None, len(bursts)
    span = bursts[-1][0] - bursts[0][0]
    return sum(b[1] for b in bursts[1:]) * inputs / span, len(bursts)


def run_config(port, replicas, body, inputs, connections, warmup, window):
    before = {r: metrics(r) for r in replicas}
    records, errors = [], []
    t_start = time.monotonic()
    w0, w1 = t_start + warmup, t_start + warmup + window
    threads = [threading.Thread(target=client, args=(port, body, w1, records, errors))
               for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:  # each finishes its request in flight: nothing is left queued
        t.join()
    after = {r: metrics(r) for r in replicas}
    in_window = [r for r in records if w0 <= r[1] <= w1]
    lat = [(r[1] - r[0]) * 1000 for r in in_window]
    total, per_replica, bursts = 0.0, {}, {}
    burst_ok = True
    for upstream in sorted({r[2] for r in in_window}):
        rate, n_bursts = burst_rate([r[1] for r in in_window if r[2] == upstream], inputs)
        bursts[upstream] = n_bursts
        if rate is None:
            burst_ok = False
        else:
            total += rate
    window_rate = len(in_window) * inputs / window
    for r in replicas:
        d = {k: after[r][k] - before[r][k] for k in after[r]}
        per_replica[r] = {
            "embed_requests_served": int(d["embed_200"]),  # server's /metrics, whole phase
            "responses_in_window": sum(1 for x in in_window if x[2] == r),  # X-Gritserve-Upstream
            "bursts_in_window": bursts.get(r, 0),
            "mean_inputs_per_batch": round(d["batch_inputs"] / d["batches"], 2) if d["batches"] else None,
            "tokens_per_input": round(d["prompt_tokens"] / d["batch_inputs"], 1) if d["batch_inputs"] else None,
        }
    return {
        "embeddings_per_s": round(total if burst_ok else window_rate, 3),
        "rate_method": "burst-to-burst" if burst_ok else "window count",
        "window_embeddings_per_s": round(window_rate, 3),
        "requests_in_window": len(in_window),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
        "p99_ms": round(percentile(lat, 0.99), 1) if lat else None,
        "per_replica": per_replica,
        "_latencies": lat,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nginx-one", type=int, required=True, help="nginx port fronting replica 1 only")
    ap.add_argument("--nginx-two", type=int, required=True, help="nginx port fronting both replicas")
    ap.add_argument("--replica", action="append", required=True, help="host:port of each replica")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=8)
    ap.add_argument("--window", type=float, default=40)
    ap.add_argument("--meta", default="{}", help="JSON object merged into the result")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()

    body = json.dumps({"inputs": [TEXT] * a.inputs}).encode()
    for r in a.replica:  # a first request to each replica directly: page in the weights
        conn = http.client.HTTPConnection(r, timeout=120)
        conn.request("POST", "/embed", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"warm-up request to {r}: HTTP {resp.status}")
        conn.close()

    load1 = os.getloadavg()[0]
    runs = []
    for rnd in range(1, a.rounds + 1):
        for n, port in ((1, a.nginx_one), (2, a.nginx_two)):
            res = run_config(port, a.replica, body, a.inputs, a.connections, a.warmup, a.window)
            res = {"round": rnd, "replicas": n, **res}
            runs.append(res)
            print(f"round {rnd} replicas {n}: {res['embeddings_per_s']} embeddings/s "
                  f"(window count {res['window_embeddings_per_s']}), p50 {res['p50_ms']} ms, "
                  f"p99 {res['p99_ms']} ms, errors {res['errors']}, served "
                  + ", ".join(f"{k}: {v['embed_requests_served']}" for k, v in res["per_replica"].items()),
                  file=sys.stderr, flush=True)

    summary = {}
    for n in (1, 2):
        rs = [r for r in runs if r["replicas"] == n]
        lat = [x for r in rs for x in r["_latencies"]]
        summary[f"replicas_{n}"] = {
            "embeddings_per_s_per_round": [r["embeddings_per_s"] for r in rs],
            "median_embeddings_per_s": round(statistics.median(r["embeddings_per_s"] for r in rs), 3),
            "p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
            "p99_ms": round(percentile(lat, 0.99), 1) if lat else None,
        }
    one, two = summary["replicas_1"], summary["replicas_2"]
    per_round = [round(b / a_, 3) for a_, b in zip(one["embeddings_per_s_per_round"],
                                                   two["embeddings_per_s_per_round"]) if a_]
    summary["ratio_2_over_1"] = round(two["median_embeddings_per_s"] / one["median_embeddings_per_s"], 3)
    summary["ratio_per_round"] = per_round

    r1, r2 = a.replica[0], a.replica[1]
    checks = {
        "errors": sum(r["errors"] for r in runs),
        # nginx -> 1 replica must reach replica 1 only; nginx -> 2 must reach both.
        "one_replica_config_used_only_replica_1": all(
            r["per_replica"][r1]["embed_requests_served"] > 0 and r["per_replica"][r2]["embed_requests_served"] == 0
            for r in runs if r["replicas"] == 1),
        "two_replica_config_used_both": all(
            r["per_replica"][r1]["embed_requests_served"] > 0 and r["per_replica"][r2]["embed_requests_served"] > 0
            for r in runs if r["replicas"] == 2),
    }
    checks["ok"] = (checks["errors"] == 0 and checks["one_replica_config_used_only_replica_1"]
                    and checks["two_replica_config_used_both"])
    for r in runs:
        del r["_latencies"]
    result = {
        **json.loads(a.meta),
        "load": {"connections": a.connections, "inputs_per_request": a.inputs,
                 "text_chars": len(TEXT), "warmup_s": a.warmup, "window_s": a.window,
                 "rounds": a.rounds, "order": "1,2 replicas alternating per round"},
        "loadavg_1min_start": round(load1, 2),
        "loadavg_1min_end": round(os.getloadavg()[0], 2),
        "summary": summary,
        "checks": checks,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0 if checks["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
