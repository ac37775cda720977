#!/usr/bin/env python3
"""Regenerates tests/fixtures/tiny/: llama.cpp's logits at every position of a fixed token
sequence for tiny random models of each architecture, written by `llmd make-model` (which is
deterministic for a given seed, so the test rebuilds the same files instead of committing them).

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

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
# f32 weights check the architecture's arithmetic tightly; q8_0 adds the quantized kernels.
TYPES = ["f32", "q8_0"]
SEED = 7
N_POS = 20


def tokens(n_vocab: int) -> list[int]:
    # Spread over the vocabulary, skipping the first few (special) ids.
    return [3 + (i * 7919 + 13) % (n_vocab - 3) for i in range(N_POS)]


def main() -> None:
    llmd, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    meta = {"seed": SEED, "preset": "tiny", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, ty in [(a, t) for a in ARCHS for t in TYPES]:
            name = f"{arch}-{ty}"
            path = os.path.join(tmp, f"{name}.gguf")
            subprocess.run(
                [llmd, "make-model", "--arch", arch, "--preset", "tiny", "--type", ty, "--seed", str(SEED), "-o", path],
                check=True,
                capture_output=True,
            )
            llm = Llama(model_path=path, n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False)
            ids = tokens(llm.n_vocab())
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[: len(ids)], dtype="<f4")
            logits.tofile(os.path.join(out_dir, f"{name}.logits.f32"))
            meta["models"][name] = {"arch": arch, "type": ty, "tokens": ids, "n_vocab": llm.n_vocab()}
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
