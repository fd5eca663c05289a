#!/usr/bin/env python3
"""End-to-end RAG over a document collection, against one running server.

Standard library only. Two phases, so that the slow setup can be split over
several short runs (each under the machine's CPU lock):

  rag_collection.py --port P setup --start 0 --count 250   # add documents
  rag_collection.py --port P measure --rounds 5 > out.json

`setup` creates the collection (first call) and adds generated documents of
about --doc-tokens tokens each. `measure` times, in interleaved rounds, the time
to the first streamed token of
  (a) one /generate request with "retrieve": {"collection", "top_k"};
  (b) the client-side flow: POST /v1/collections/{name}/search (the server
      embeds the question with the query instruction and searches), then
      /generate with the winners as "documents": ["<name>/<id>", ...] (their
      K/V cached when they were added);
  (c) the same documents uncached: their texts in the prompt, then the question.
Every request in a round has its own question (same length), and the order of
(a), (b), (c) rotates from round to round, so no request reuses another's work
beyond the documents' K/V that the collection keeps.
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import time

WORDS = (
    "river mountain engine protocol garden winter market harbour lantern copper "
    "signal forest library season orbit valley merchant castle bridge furnace "
    "meadow thunder compass archive voyage quarry beacon glacier canyon orchard "
    "silver timber current pilot ledger tunnel harvest summit island pepper "
    "crystal saddle anchor shadow meteor violin cotton marble falcon nickel "
    "planet rocket sensor kernel vector matrix cipher router socket buffer "
    "cluster shard replica quorum latency packet module compiler lexicon "
    "theorem lemma axiom proof integral tensor gradient neuron synapse "
    "protein enzyme molecule isotope magnet voltage circuit diode turbine "
    "the of and in to a is was for on by with as at from that which "
    "early late northern southern ancient modern quiet rapid heavy bright"
).split()

COLLECTION = "ragbench"
QUERY_INSTRUCTION = "Retrieve passages that answer the question"


class Client:
    def __init__(self, host, port):
        self.conn = http.client.HTTPConnection(host, port, timeout=600)

    def post(self, path, body):
        self.conn.request("POST", path, json.dumps(body),
                          {"Content-Type": "application/json"})
        res = self.conn.getresponse()
        data = res.read()
        if res.status not in (200, 201):
            raise RuntimeError(f"{path}: {res.status} {data[:500]!r}")
        return json.loads(data)

    def get(self, path):
        self.conn.request("GET", path)
        res = self.conn.getresponse()
        data = res.read()
        if res.status not in (200, 201):
            raise RuntimeError(f"{path}: {res.status} {data[:500]!r}")
        return json.loads(data)

    def stream(self, path, body):
        """POSTs with "stream": true; returns (ms to the first text event,
        the last event, ms in all)."""
        t0 = time.perf_counter()
        self.conn.request("POST", path, json.dumps(dict(body, stream=True)),
                          {"Content-Type": "application/json"})
        res = self.conn.getresponse()
        if res.status not in (200, 201):
            raise RuntimeError(f"{path}: {res.status} {res.read()[:500]!r}")
        first, last = None, None
        while True:
            line = res.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and "text" in event and "finish_reason" not in event:
                first = (time.perf_counter() - t0) * 1e3
            last = event
        total = (time.perf_counter() - t0) * 1e3
        res.read()
        return first, last, total


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def doc_text(i, n_words):
    rng = random.Random(1000 + i)
    return f"Document {i}. " + words(rng, n_words) + "."


def tokens(c, text):
    return len(c.post("/tokenize", {"inputs": text, "add_special_tokens": False})[0])


def words_for(c, target, make):
    """Words per text such that make(n) tokenizes to about `target` tokens."""
    n = target
    for _ in range(6):
        got = statistics.mean(tokens(c, make(k, n)) for k in range(5))
        n = max(1, round(n * target / got))
    return n


def setup(c, args):
    if args.start == 0:
        c.post("/v1/collections", {"name": COLLECTION, "kv_source": "embed",
                                   "document_instruction": "",
                                   "query_instruction": QUERY_INSTRUCTION})
    n_words = words_for(c, args.doc_tokens, lambda k, n: doc_text(k, n))
    t0 = time.perf_counter()
    for b in range(args.start, args.start + args.count, args.batch):
        end = min(b + args.batch, args.start + args.count)
        docs = [{"id": f"d{i}", "text": doc_text(i, n_words)} for i in range(b, end)]
        c.post(f"/v1/collections/{COLLECTION}/documents", {"documents": docs})
    secs = time.perf_counter() - t0
    info = c.get(f"/v1/collections/{COLLECTION}")
    print(json.dumps({"added": args.count, "seconds": round(secs, 1),
                      "words_per_doc": n_words, "collection": info}))


def question(k, n_words):
    return f"Question {k}: what does the archive say about " + words(random.Random(k), n_words) + "?"


def run_a(c, q, args):
    return c.stream("/generate", {"prompt": q, "max_tokens": args.max_tokens,
                                  "temperature": 0,
                                  "retrieve": {"collection": COLLECTION, "top_k": args.top_k}})


def run_b(c, q, args):
    t0 = time.perf_counter()
    hits = c.post(f"/v1/collections/{COLLECTION}/search",
                  {"query": q, "top_k": args.top_k, "return_text": False,
                   "return_metadata": False})["results"]
    search_ms = (time.perf_counter() - t0) * 1e3
    ids = [f"{COLLECTION}/{h['id']}" for h in hits]
    first, last, total = c.stream("/generate", {"prompt": q, "max_tokens": args.max_tokens,
                                                "temperature": 0, "documents": ids,
                                                "kv_source": "embed"})
    last["search_call_ms"] = search_ms
    last["retrieved"] = hits
    return first + search_ms, last, total + search_ms


def run_c(c, q, args):
    # The documents a search picks for this question (untimed), as plain text.
    hits = c.post(f"/v1/collections/{COLLECTION}/search",
                  {"query": q, "top_k": args.top_k, "return_metadata": False})["results"]
    prompt = "\n\n".join(h["text"] for h in hits) + "\n\n" + q
    return c.stream("/generate", {"prompt": prompt, "max_tokens": args.max_tokens,
                                  "temperature": 0})


def measure(c, args):
    q_words = words_for(c, args.question_tokens, lambda k, n: question(10**6 + k, n))
    runs = {"a": run_a, "b": run_b, "c": run_c}
    per = {k: [] for k in runs}
    # One unrecorded request of each kind first (first-touch costs).
    for i, name in enumerate(runs):
        runs[name](c, question(900000 + i, q_words), args)
    for r in range(args.rounds):
        order = list(runs)[r % 3:] + list(runs)[:r % 3]
        for name in order:
            k = 1000 * r + ord(name)
            q = question(k, q_words)
            first, last, total = runs[name](c, q, args)
            t = last.get("timings", {})
            u = last.get("usage", {})
            per[name].append({
                "round": r, "ttft_ms": round(first, 2), "total_ms": round(total, 2),
                "server_ttft_ms": t.get("ttft_ms"), "retrieval_ms": t.get("retrieval_ms"),
                "documents_ms": t.get("documents_ms"), "prefill_ms": t.get("prefill_ms"),
                "search_call_ms": last.get("search_call_ms"),
                "prompt_tokens": u.get("prompt_tokens"), "cached_tokens": u.get("cached_tokens"),
                "retrieved": [h["id"] for h in last.get("retrieved", [])],
            })
            print(json.dumps({name: per[name][-1]}), file=sys.stderr)

    def med(name, key):
        vals = [x[key] for x in per[name] if x[key] is not None]
        return round(statistics.median(vals), 2) if vals else None

    summary = {name: {"ttft_ms_median": med(name, "ttft_ms"),
                      "retrieval_ms_median": med(name, "retrieval_ms"),
                      "search_call_ms_median": med(name, "search_call_ms"),
                      "prompt_tokens_median": med(name, "prompt_tokens"),
                      "cached_tokens_median": med(name, "cached_tokens")} for name in runs}
    info = c.get(f"/v1/collections/{COLLECTION}")
    print(json.dumps({"collection": info, "top_k": args.top_k, "rounds": args.rounds,
                      "question_words": q_words, "max_tokens": args.max_tokens,
                      "ttft": "client-side, request sent to first streamed text event "
                              "((b): plus the search call before it)",
                      "summary": summary, "rounds_detail": per}, indent=2))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    sub = p.add_subparsers(dest="phase", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--start", type=int, default=0)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--batch", type=int, default=50)
    s.add_argument("--doc-tokens", type=int, default=256)
    m = sub.add_parser("measure")
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--top-k", type=int, default=5)
    m.add_argument("--question-tokens", type=int, default=32)
    m.add_argument("--max-tokens", type=int, default=4)
    args = p.parse_args()
    c = Client(args.host, args.port)
    (setup if args.phase == "setup" else measure)(c, args)


if __name__ == "__main__":
    main()
