#!/usr/bin/env bash
# gritserve against llama.cpp on the same weights, side by side and interleaved
# (issue 15): a random checkpoint of the exact Qwen2.5-0.5B shape, converted to
# GGUF (safetensors_to_gguf.py) and quantized with llama.cpp's own tool, then
# ROUNDS rounds that each run every configuration once, so that load from
# other work on a shared machine falls on all of them alike. Prints one table
# of tokens/s (the best round of each) and writes every measurement as JSON.
#
#   bench/llamacpp/compare.sh LLAMA_CPP_BUILD_DIR [GRITSERVE_BUILD_DIR]
#
# LLAMA_CPP_BUILD_DIR holds bin/llama-bench, bin/llama-batched-bench and
# bin/llama-quantize (a CMake build of llama.cpp, e.g. with -DGGML_NATIVE=ON;
# add -DGGML_AVX512=OFF builds for the AVX2 comparison). Settings, from the
# environment: THREADS (nproc), ROUNDS (3), WORK (a temporary folder),
# GRITSERVE_CPU_ISA (passed through: avx2 runs gritserve's AVX2 paths),
# OUT (bench/llamacpp/last-run.json).
set -euo pipefail
llama=${1:?usage: compare.sh LLAMA_CPP_BUILD_DIR [GRITSERVE_BUILD_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
build=${2:-${here}/../../build}
threads=${THREADS:-$(nproc)}
rounds=${ROUNDS:-3}
work=${WORK:-$(mktemp -d)}
out=${OUT:-${here}/last-run.json}
for tool in llama-bench llama-batched-bench llama-quantize; do
  [ -x "${llama}/bin/${tool}" ] || { echo "compare: ${llama}/bin/${tool} missing" >&2; exit 2; }
done
[ -x "${build}/bench_engine" ] || { echo "compare: ${build}/bench_engine missing" >&2; exit 2; }

model="${work}/qwen2.5-0.5b-bf16"
if [ ! -f "${model}/config.json" ]; then
  "${build}/gritserve" make-checkpoint --out "$model" --preset qwen2.5-0.5b --dtype bf16 --seed 7
fi
[ -f "${work}/bf16.gguf" ] || python3 "${here}/safetensors_to_gguf.py" "$model" "${work}/bf16.gguf"
for q in Q8_0 Q4_K_M; do
  [ -f "${work}/${q}.gguf" ] ||
    "${llama}/bin/llama-quantize" "${work}/bf16.gguf" "${work}/${q}.gguf" "$q" "$threads" >/dev/null 2>&1
done

results="${work}/results.jsonl"
: > "$results"
record() {  # record ENGINE CONFIG JSON
  printf '{"engine": "%s", "config": "%s", "result": %s}\n' "$1" "$2" "$3" >> "$results"
}
compact() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))'; }
llama_bench() {  # llama_bench GGUF ARGS...: llama-bench's JSON on one line, an object per test
  "${llama}/bin/llama-bench" -m "$1" -t "$threads" -r 1 -o json "${@:2}" 2>/dev/null | compact
}
for round in $(seq "$rounds"); do
  echo "compare: round ${round} of ${rounds}" >&2
  for q in bf16 Q8_0 Q4_K_M; do
    g="${work}/${q}.gguf"
    record llama.cpp "$q" "{\"prefill_512\": $(llama_bench "$g" -p 512 -n 0)}"
    record llama.cpp "$q" "{\"decode_1\": $(llama_bench "$g" -p 0 -n 64)}"
    # llama-bench embeds one 128-token input at a time (gritserve: 8 in a batch);
    # both are tokens/s of bidirectional 128-token embedding passes.
    record llama.cpp "$q" "{\"embed_8x128\": $(llama_bench "$g" -p 128 -n 0 -embd 1)}"
    record llama.cpp "$q" "{\"decode_8\": $("${llama}/bin/llama-batched-bench" -m "$g" -t "$threads" \
      -c 4096 -b 512 -npp 16 -ntg 64 -npl 8 --output-format jsonl 2>/dev/null | grep '^{' | tail -1)}"
  done
  for w in bf16 q8 q4; do
    record gritserve "$w" "$("${build}/bench_engine" --model "$model" --weights "$w" \
      --threads "$threads" --repeats 1 | compact)"
  done
done

python3 - "$results" "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = {}
def keep(engine, config, metric, value):
    k = (engine, config, metric)
    best[k] = max(best.get(k, 0.0), value)
for r in rows:
    e, c, res = r["engine"], r["config"], r["result"]
    if e == "llama.cpp":
        for metric, v in res.items():
            if metric == "decode_8":
                keep(e, c, metric, v["speed_tg"])
            else:
                keep(e, c, metric, v[0]["avg_ts"])
    else:
        keep(e, c, "prefill_512", res["prefill_512_tokens_per_s"])
        keep(e, c, "embed_8x128", res["embed_8x128_tokens_per_s"])
        keep(e, c, "decode_1", res["decode_batch1_tokens_per_s"])
        keep(e, c, "decode_1_sampled", res.get("decode_batch1_t0.7_top_p0.9_tokens_per_s", 0))
        keep(e, c, "decode_8", res["decode_8_concurrent_tokens_per_s"])
cols = [("llama.cpp", "bf16"), ("llama.cpp", "Q8_0"), ("llama.cpp", "Q4_K_M"),
        ("gritserve", "bf16"), ("gritserve", "q8"), ("gritserve", "q4")]
metrics = ["prefill_512", "embed_8x128", "decode_1", "decode_1_sampled", "decode_8"]
print("| tokens/s | " + " | ".join("%s %s" % c for c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for m in metrics:
    cells = ["%.1f" % best[(e, c, m)] if (e, c, m) in best else "" for e, c in cols]
    print("| %s | %s |" % (m, " | ".join(cells)))
def ratio(a, b, m):
    return best[("gritserve", a, m)] / best[("llama.cpp", b, m)]
print()
print("q8 decode_1 / llama.cpp Q8_0: %.2f" % ratio("q8", "Q8_0", "decode_1"))
print("q4 decode_1 / llama.cpp Q4_K_M: %.2f" % ratio("q4", "Q4_K_M", "decode_1"))
print("q8 decode_8 / llama.cpp Q8_0: %.2f" % ratio("q8", "Q8_0", "decode_8"))
print("q8 prefill_512 / llama.cpp bf16: %.2f" % ratio("q8", "bf16", "prefill_512"))
print("q8 embed_8x128 / llama.cpp bf16: %.2f" % ratio("q8", "bf16", "embed_8x128"))
json.dump({"rows": rows, "best": {"%s/%s/%s" % k: v for k, v in best.items()}},
          open(sys.argv[2], "w"), indent=1)
PY
