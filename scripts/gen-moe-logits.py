#!/usr/bin/env python3
"""Regenerates tests/fixtures/moe/: llama.cpp's logits at every position of a fixed token
sequence, and its greedy continuation of a short prompt, for tiny random mixture-of-experts
models written by `llmd make-model` (qwen3moe; qwen2moe, with its shared expert; and mixtral: a
llama file with experts). The
models are deterministic for a given seed, so the test rebuilds the same files instead of
committing them.

Each greedy step records llama.cpp's top-1 margin over the step's logit spread: past the first
near-tie, llmd's continuation may fairly differ.

    . ~/.cache/llmd-llama-ref/env.sh
    python scripts/gen-moe-logits.py path/to/llmd tests/fixtures/moe
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

SEED = 7
# Positions whose logits are compared.
N_POS = 24
# The context llama.cpp is asked for.
N_CTX = 64
# Greedy: prompt length and tokens generated.
N_PROMPT = 6
N_GEN = 24

# name: (make-model arch, weight type)
CASES = {
    "qwen3moe-f32": ("qwen3moe", "f32"),
    "qwen3moe-q8_0": ("qwen3moe", "q8_0"),
    "qwen3moe-q4_k_m": ("qwen3moe", "q4_k_m"),
    "qwen2moe-f32": ("qwen2moe", "f32"),
    "qwen2moe-q8_0": ("qwen2moe", "q8_0"),
    "mixtral-f32": ("mixtral", "f32"),
    "mixtral-q8_0": ("mixtral", "q8_0"),
}


def tokens(n_vocab: int, n: int) -> list[int]:
    # Spread over the vocabulary, skipping the first few (special) ids.
    return [3 + (i * 7919 + 13) % (n_vocab - 3) for i in range(n)]


def greedy(llm: Llama, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    llm.reset()
    llm.eval(prompt)
    out, margins = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        order = np.argsort(-row, kind="stable")
        spread = max(row.max() - row.min(), 1e-6)
        margins.append(float((row[order[0]] - row[order[1]]) / spread))
        t = int(order[0])
        out.append(t)
        llm.eval([t])
    return out, margins


def main() -> None:
    llmd, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    meta = {"seed": SEED, "preset": "tiny", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, ty) in CASES.items():
            path = os.path.join(tmp, f"{name}.gguf")
            make_args = ["--arch", arch, "--preset", "tiny", "--type", ty, "--seed", str(SEED)]
            subprocess.run([llmd, "make-model", *make_args, "-o", path], check=True, capture_output=True)
            llm = Llama(model_path=path, n_ctx=N_CTX, n_threads=2, n_batch=64, logits_all=True, verbose=False)
            ids = tokens(llm.n_vocab(), N_POS)
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[: len(ids)], dtype="<f4")
            logits.tofile(os.path.join(out_dir, f"{name}.logits.f32"))
            prompt = ids[:N_PROMPT]
            cont, margins = greedy(llm, prompt, N_GEN)
            meta["models"][name] = {
                "arch": arch,
                "type": ty,
                "tokens": ids,
                "n_vocab": llm.n_vocab(),
                "n_ctx": llm.n_ctx(),
                "greedy_prompt": prompt,
                "greedy": cont,
                "greedy_margins": margins,
            }
            print(f"{name}: {len(ids)} positions, greedy {cont[:8]}..., min margin {min(margins):.4f}")
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
