#!/usr/bin/env python3
"""Regenerates tests/fixtures/kv/: llama.cpp's logits with quantized KV caches (its -ctk/-ctv,
which need flash attention for a quantized V) on tiny random models of each architecture,
written by `llmd make-model` (deterministic for a seed, so the test rebuilds the same files):
the logits at every position of a fixed prompt evaluated as one batch, then the greedy
continuation evaluated one token at a time (the decode path) with the logits of each step.

    . ~/.cache/llmd-llama-ref/env.sh
    python scripts/gen-kv-logits.py path/to/llmd tests/fixtures/kv
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
# GGML type ids of the cache types (ggml.h: GGML_TYPE_F16 = 1, Q4_0 = 2, Q8_0 = 8).
CACHE_IDS = {"f16": 1, "q4_0": 2, "q8_0": 8}
# (weights, K cache, V cache): q8_0 and q4_0 caches on every architecture with f32 weights, so
# the cache is the main source of difference; the mixed pairs on llama only.
CASES = [(arch, "f32", k, v) for arch in ARCHS for k, v in [("q8_0", "q8_0"), ("q4_0", "q4_0")]] + [
    ("llama", "f32", "q8_0", "f16"),
    ("llama", "f32", "f16", "q4_0"),
    ("qwen2", "q8_0", "q8_0", "q8_0"),
]
SEED = 7
N_POS = 20
N_GEN = 16


def tokens(n_vocab: int) -> list[int]:
    # Spread over the vocabulary, skipping the first few (special) ids (as gen-tiny-logits.py).
    return [3 + (i * 7919 + 13) % (n_vocab - 3) for i in range(N_POS)]


def main() -> None:
    llmd, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    meta = {"seed": SEED, "preset": "tiny", "n_gen": N_GEN, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, ty, k, v in CASES:
            path = os.path.join(tmp, f"{arch}-{ty}.gguf")
            if not os.path.exists(path):
                subprocess.run(
                    [llmd, "make-model", "--arch", arch, "--preset", "tiny", "--type", ty, "--seed", str(SEED),
                     "-o", path],
                    check=True,
                    capture_output=True,
                )
            llm = Llama(model_path=path, n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False,
                        type_k=CACHE_IDS[k], type_v=CACHE_IDS[v], flash_attn=True)
            ids = tokens(llm.n_vocab())
            llm.reset()
            llm.eval(ids)
            rows = [np.array(llm.scores[i], dtype="<f4") for i in range(N_POS)]
            greedy = []
            for _ in range(N_GEN):
                best = int(np.argmax(rows[-1]))
                greedy.append(best)
                llm.eval([best])
                rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype="<f4"))
            name = f"{arch}-{ty}-k{k}-v{v}"
            np.stack(rows).tofile(os.path.join(out_dir, f"{name}.logits.f32"))
            meta["models"][name] = {
                "arch": arch,
                "type": ty,
                "cache_type_k": k,
                "cache_type_v": v,
                "tokens": ids,
                "greedy": greedy,
                "n_vocab": llm.n_vocab(),
            }
            del llm
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
