#!/usr/bin/env python3
"""Regenerates tests/fixtures/tiny/: llama.cpp's logits at every position of a fixed token
sequence for tiny random models of each architecture and rope scaling, written by
`llmd make-model` (which is deterministic for a given seed, so the test rebuilds the same files
instead of committing them).

Each case records the make-model arguments, the tokens and the context llama.cpp ran with
(`n_ctx`: it picks Phi-3's long or short rope factors by it, and llmd must pick the same).

    . ~/.cache/llmd-llama-ref/env.sh
    python scripts/gen-tiny-logits.py path/to/llmd tests/fixtures/tiny
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

# f32 weights check the architecture's arithmetic tightly; q8_0 adds the quantized kernels.
TYPES = ["f32", "q8_0"]
SEED = 7
# Positions compared by default.
N_POS = 20
# Positions of the cases whose rope corrects for an original context of 32: past it.
N_POS_LONG = 48
# The context llama.cpp is asked for (it may round it up; the fixture records what it used).
N_CTX = 64
# YaRN / longrope over an original context the sequence outgrows.
SHORT_ORIGINAL = ["--ctx", "128", "--rope-factor", "4", "--rope-orig-ctx", "32"]

# name: (arch, make-model arguments beyond --arch/--preset/--type/--seed, positions)
CASES = {
    "llama": ("llama", [], N_POS),
    "qwen2": ("qwen2", [], N_POS),
    "qwen3": ("qwen3", [], N_POS),
    "gemma3": ("gemma3", [], N_POS),
    # Llama 3.1: per-dimension frequency factors, computed for an original context of 32 (Llama
    # 3.1's own, 8192, only scales wavelengths a 48-token sequence does not reach).
    "llama-rope-freqs": ("llama", ["--rope-freqs", "--rope-orig-ctx", "32"], N_POS_LONG),
    "llama-linear": ("llama", ["--rope-scaling", "linear", "--rope-factor", "4"], N_POS),
    "llama-yarn": ("llama", ["--rope-scaling", "yarn", *SHORT_ORIGINAL], N_POS_LONG),
    "qwen2-yarn": ("qwen2", ["--rope-scaling", "yarn", *SHORT_ORIGINAL], N_POS_LONG),
    # Mistral Nemo / Small shape: key_length 128 with 4 heads over 256 wide, rope base 1e6.
    "llama-mistral": ("llama", ["--head-dim", "128", "--rope-base", "1000000"], N_POS),
    "phi3": ("phi3", [], N_POS),
    # The context llama.cpp runs with exceeds the original 32: the long factors.
    "phi3-longrope-long": (
        "phi3", ["--rope-scaling", "longrope", "--ctx", "4096", "--rope-orig-ctx", "32"], N_POS_LONG),
    # An original context beyond the one llama.cpp runs with: the short factors.
    "phi3-longrope-short": (
        "phi3", ["--rope-scaling", "longrope", "--ctx", "32768", "--rope-orig-ctx", "1024"], N_POS),
    # Gemma 3 4B+ scale their global layers' rope linearly by 8; the local layers are not.
    "gemma3-linear": ("gemma3", ["--rope-scaling", "linear", "--rope-factor", "8"], N_POS),
    # Sliding window of 16 on every other layer: the 40 positions reach past it.
    "gemma2": ("gemma2", [], 40),
    # Soft-caps low enough to bend the tiny model's attention and output logits.
    "gemma2-softcap": ("gemma2", ["--attn-softcap", "0.5", "--final-softcap", "1"], 40),
}


def tokens(n_vocab: int, n: int) -> list[int]:
    # Spread over the vocabulary, skipping the first few (special) ids.
    return [3 + (i * 7919 + 13) % (n_vocab - 3) for i in range(n)]


def main() -> None:
    llmd, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    meta = {"seed": SEED, "preset": "tiny", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for (case, (arch, args, n_pos)), ty in [(c, t) for c in CASES.items() for t in TYPES]:
            name = f"{case}-{ty}"
            path = os.path.join(tmp, f"{name}.gguf")
            make_args = ["--arch", arch, "--preset", "tiny", "--type", ty, "--seed", str(SEED), *args]
            subprocess.run([llmd, "make-model", *make_args, "-o", path], check=True, capture_output=True)
            llm = Llama(model_path=path, n_ctx=N_CTX, n_threads=2, n_batch=64, logits_all=True, verbose=False)
            ids = tokens(llm.n_vocab(), n_pos)
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[: len(ids)], dtype="<f4")
            logits.tofile(os.path.join(out_dir, f"{name}.logits.f32"))
            meta["models"][name] = {
                "arch": arch,
                "type": ty,
                "args": args,
                "tokens": ids,
                "n_vocab": llm.n_vocab(),
                "n_ctx": llm.n_ctx(),
            }
            print(f"{name}: {len(ids)} positions, n_ctx {llm.n_ctx()}")
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
