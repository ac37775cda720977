#!/usr/bin/env python3
"""Regenerates tests/fixtures/quant-types/: llama.cpp's logits at every position of a fixed token
sequence, and its greedy continuation of that sequence with each step's top-1 margin, for a small random Llama-3.1-shaped model (with `rope_freqs`) in every weight type llmd computes with, beyond the
f32 / q8_0 pair of tests/fixtures/tiny. Checked by daemon/tests/it/quant_types_vs_llama_cpp.rs.

    . ~/.cache/llmd-llama-ref/env.sh
    python scripts/gen-quant-logits.py path/to/llmd tests/fixtures/quant-types

It also checks that llama-quantize, given the same model in f32, writes exactly the tensors
`llmd make-model` writes for each of its types (same mix, same bytes), except those llama-quantize
makes only with an importance matrix (iq2_m, iq3_xxs, iq3_xs) and the dense `mxfp4` (llama.cpp's
MXFP4_MOE quantizes only expert tensors to MXFP4).

Two sources of models:
  - the types `llmd make-model` writes (its quantizers are byte-exact with ggml's, and it is
    deterministic per seed): the test rebuilds the same files, so only the logits are committed;
  - llama-quantize's IQ1/IQ2/IQ3 mixes (`lq-*`), made with a synthetic importance matrix (which
    IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS need, and llmd cannot quantize to) from the f32 model; the
    files are small and committed.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from llama_cpp import Llama

# One layer, rows of 256 (every block size), a small vocabulary: small files, every code path.
# Llama-3.1-shaped: rope frequency factors, with an original context short enough (32) that
# they change the rotation of the 16 positions compared.
SHAPE = ["--arch", "llama", "--layers", "1", "--vocab", "288", "--ff", "256",
         "--rope-freqs", "--rope-orig-ctx", "32"]
SEED = 7
N_POS = 16
# Greedy tokens generated after the prompt (N_POS + N_GEN must fit the context of 64).
N_GEN = 16
MAKE_MODEL_TYPES = ["bf16", "q4_1", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s",
                    "q5_k_s", "q5_k_m", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq4_nl",
                    "iq4_xs", "tq1_0", "tq2_0", "mxfp4"]
# Mixes llama-quantize does not write without an importance matrix (or, mxfp4, at all).
NOT_LLAMA_QUANTIZE = {"iq2_m", "iq3_xxs", "iq3_xs", "mxfp4"}
LLAMA_QUANTIZE_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]


def tokens(n_vocab: int) -> list[int]:
    # Spread over the vocabulary, skipping the first few (special) ids.
    return [3 + (i * 7919 + 13) % (n_vocab - 3) for i in range(N_POS)]


def write_imatrix(model: str, path: str) -> None:
    """A legacy-format importance matrix of random positive values for every 2-D weight."""
    rng = np.random.default_rng(3)
    entries = [(t.name, (0.5 + rng.random(int(t.shape[0]))).astype(np.float32))
               for t in GGUFReader(model).tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, v in entries:
            f.write(struct.pack("<i", len(name)) + name.encode())
            f.write(struct.pack("<ii", 1, len(v)) + v.tobytes())
        f.write(struct.pack("<i", 1) + struct.pack("<i", 9) + b"synthetic")


def logits(path: str) -> tuple[list[int], int, np.ndarray, list[int], list[float]]:
    """The logits of every prompt position, then llama.cpp's greedy continuation of the prompt
    (N_GEN tokens) with each step's top-1 margin as a fraction of that step's logit spread."""
    llm = Llama(model_path=path, n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False)
    ids = tokens(llm.n_vocab())
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)], dtype="<f4")
    greedy, margins = [], []
    for _ in range(N_GEN):
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-last, kind="stable")
        spread = float(last.max() - last.min())
        margins.append(float(last[order[0]] - last[order[1]]) / max(spread, 1e-6))
        greedy.append(int(order[0]))
        llm.eval([int(order[0])])
    return ids, llm.n_vocab(), prompt_logits, greedy, margins


def tensor_types(path: str) -> list[str]:
    return sorted({t.tensor_type.name for t in GGUFReader(path).tensors})


def assert_same_tensors(ours: str, theirs: str) -> None:
    """Every tensor of `ours` has the type and bytes of the same tensor in `theirs`."""
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    for t in GGUFReader(ours).tensors:
        u = b[t.name]
        assert t.tensor_type == u.tensor_type, f"{ours}: {t.name} is {t.tensor_type.name}, llama-quantize {u.tensor_type.name}"
        same = np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8))
        assert same, f"{ours}: {t.name} differs from llama-quantize's"


def main() -> None:
    llmd, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    meta = {"seed": SEED, "shape": SHAPE, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        def make(ty: str) -> str:
            path = os.path.join(tmp, f"{ty}.gguf")
            subprocess.run([llmd, "make-model", *SHAPE, "--type", ty, "--seed", str(SEED), "-o", path],
                           check=True, capture_output=True)
            return path

        f32 = make("f32")
        for ty in MAKE_MODEL_TYPES:
            path = make(ty)
            if ty not in NOT_LLAMA_QUANTIZE:
                theirs = os.path.join(tmp, f"llama-quantize-{ty}.gguf")
                subprocess.run(["llama-quantize", f32, theirs, ty.upper()], check=True, capture_output=True)
                assert_same_tensors(path, theirs)
            ids, n_vocab, lg, greedy, margins = logits(path)
            lg.tofile(os.path.join(out_dir, f"{ty}.logits.f32"))
            meta["models"][ty] = {"make_model_type": ty, "tokens": ids, "n_vocab": n_vocab,
                                  "tensor_types": tensor_types(path), "greedy": greedy,
                                  "margins": margins}

        # llama-quantize records the importance matrix's path in the file: a relative one keeps
        # the files the same from run to run.
        write_imatrix(f32, os.path.join(tmp, "imatrix.dat"))
        for ftype in LLAMA_QUANTIZE_TYPES:
            name = f"lq-{ftype.lower()}"
            path = os.path.abspath(os.path.join(out_dir, f"{name}.gguf"))
            subprocess.run(["llama-quantize", "--imatrix", "imatrix.dat", f32, path, ftype],
                           check=True, capture_output=True, cwd=tmp)
            ids, n_vocab, lg, greedy, margins = logits(path)
            lg.tofile(os.path.join(out_dir, f"{name}.logits.f32"))
            meta["models"][name] = {"file": f"{name}.gguf", "tokens": ids, "n_vocab": n_vocab,
                                    "tensor_types": tensor_types(path), "greedy": greedy,
                                    "margins": margins}
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
