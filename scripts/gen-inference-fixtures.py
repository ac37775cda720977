#!/usr/bin/env python3
"""Regenerates tests/fixtures/gemma3_greedy.json: llama.cpp's greedy continuations of Gemma 3 270M
Q4_K_M on a set of prompts, with the margin between the two best logits at every step (so the
test can stop comparing at the first near-tie) and the top-5 token ids at the last prompt
position (and the ten best ids with their logits, to compare values). With a KV cache type
(q8_0 or q4_0), the same with llama.cpp's quantized KV cache (keys and values of that type,
flash attention, which a quantized V cache needs) on the first half of the prompts:
tests/fixtures/gemma3_greedy_<type>.json.

Run with the llama.cpp reference build (../shared/tools/llama-cpp-ref):
    . ~/.cache/llmd-llama-ref/env.sh
    python scripts/gen-inference-fixtures.py MODEL.gguf > tests/fixtures/gemma3_greedy.json
    python scripts/gen-inference-fixtures.py MODEL.gguf q8_0 > tests/fixtures/gemma3_greedy_q8_0.json
"""
import json
import sys

import numpy as np
from llama_cpp import Llama

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans",
    "import numpy as np\n\n# Compute the mean of",
    "The quick brown fox",
    "Photosynthesis is the process by which",
    "1, 2, 3, 4, 5,",
    "My favourite book is",
    "To make a cup of tea, first",
]
N_GEN = 32
# GGML type ids of the KV cache types (ggml.h: GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q8_0 = 8).
CACHE_IDS = {"q8_0": 8, "q4_0": 2}


def main() -> None:
    model = sys.argv[1]
    cache = sys.argv[2] if len(sys.argv) > 2 else None
    kv = {} if cache is None else {"type_k": CACHE_IDS[cache], "type_v": CACHE_IDS[cache], "flash_attn": True}
    prompts = PROMPTS if cache is None else PROMPTS[: len(PROMPTS) // 2]
    llm = Llama(model_path=model, n_ctx=512, n_threads=2, n_batch=512, logits_all=True, verbose=False, **kv)
    cases = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top5 = [int(i) for i in np.argsort(-logits, kind="stable")[:5]]
        top10 = [[int(i), float(logits[i])] for i in np.argsort(-logits, kind="stable")[:10]]
        gen, margins = [], []
        for _ in range(N_GEN):
            order = np.argsort(-logits, kind="stable")
            best, second = int(order[0]), int(order[1])
            margins.append(float(logits[best] - logits[second]))
            gen.append(best)
            llm.eval([best])
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        cases.append(
            {"prompt": prompt, "prompt_ids": ids, "top5": top5, "top10": top10, "greedy": gen, "margins": margins}
        )
    out = {"model": "gemma-3-270m-q4_k_m.gguf", "n_gen": N_GEN, "cases": cases}
    if cache is not None:
        out["cache_type_k"] = out["cache_type_v"] = cache
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
