#!/usr/bin/env python3
"""Regenerates tests/fixtures/model_matrix.json: what llama.cpp itself plans for the models of the
seed's matrix split over two GPUs (`--tensor-split 1,1 -ngl 999`), read from its own estimator
(`llama-fit-params --fit-print`, which loads the model with `no_alloc` and prints each device's
model, context (KV) and compute buffers) and its load log (which device each layer goes to).
Checked by tests/tests/e2e/model_matrix.rs against `llmctl plan` on the same headers.

No GPU is needed: the two "GPUs" are llama.cpp RPC servers (CPU backends) on localhost, which
llama.cpp places layers on exactly as on GPUs. The model files are `llmd make-model
--header-only` headers extended to their full size as sparse files (no disk used): with
`no_alloc` llama.cpp reads no tensor data.

Needs llama.cpp built with RPC (the llama-cpp-ref build has no RPC), from the same source:
    SRC=~/.cache/llmd-llama-ref/src/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S $SRC -B ~/.cache/llmd-llama-rpc/build -G Ninja -DCMAKE_BUILD_TYPE=Release \\
      -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
      -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=OFF
    ninja -C ~/.cache/llmd-llama-rpc/build llama-fit-params ggml-rpc-server
Then:
    python scripts/gen-model-matrix.py target/release/llmd ~/.cache/llmd-llama-rpc/build/bin \\
        > tests/fixtures/model_matrix.json
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# The seed's matrix: (name, make-model arguments). Llama 3.1 files carry rope_freqs.
MODELS = [
    ("Llama 3.1 70B Q4_K_M", ["--arch", "llama", "--preset", "70b", "--rope-freqs", "--type", "q4_k_m"]),
    ("Llama 3.1 70B Q6_K", ["--arch", "llama", "--preset", "70b", "--rope-freqs", "--type", "q6_k"]),
    ("Qwen2.5 72B Q4_K_M", ["--arch", "qwen2", "--preset", "70b", "--type", "q4_k_m"]),
    ("Llama 3.1 405B Q2_K", ["--arch", "llama", "--preset", "405b", "--rope-freqs", "--type", "q2_k"]),
    ("Llama 3.1 405B IQ2_XXS", ["--arch", "llama", "--preset", "405b", "--rope-freqs", "--type", "iq2_xxs"]),
]
# The context planned, and the KV cache types compared.
CTX = 32768
CACHE_TYPES = ["f16", "q8_0"]
PORTS = [50152, 50153]
MIB = 1 << 20


def full_size(path: str) -> int:
    """The size a header-only GGUF file has with its tensor data."""
    d = open(path, "rb").read()
    o = 4

    def u(fmt):
        nonlocal o
        v = struct.unpack_from("<" + fmt, d, o)
        o += struct.calcsize("<" + fmt)
        return v[0]

    def s():
        nonlocal o
        n = u("Q")
        o += n
        return d[o - n:o].decode()

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def val(t):
        if t == 8:
            return s()
        if t == 9:
            at, n = u("I"), u("Q")
            return [val(at) for _ in range(n)]
        return u(scalar[t])

    u("I")
    n_tensors, n_kv = u("Q"), u("Q")
    align = 32
    for _ in range(n_kv):
        key = s()
        v = val(u("I"))
        if key == "general.alignment":
            align = v
    end = 0
    for _ in range(n_tensors):
        s()
        dims = [u("Q") for _ in range(u("I"))]
        ty, off = u("I"), u("Q")
        elems, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ty)]
        n = 1
        for x in dims:
            n *= x
        end = max(end, off + n // elems * nbytes)
    return (o + align - 1) // align * align + end


def llama_cpp_plan(bindir: str, model: str, cache: str) -> dict:
    env = dict(os.environ, LD_LIBRARY_PATH=bindir)
    rpc = ",".join(f"127.0.0.1:{p}" for p in PORTS)
    out = subprocess.run(
        [os.path.join(bindir, "llama-fit-params"), "-m", model, "--rpc", rpc, "-ngl", "999", "-ts", "1,1",
         "-c", str(CTX), "-ctk", cache, "-ctv", cache, "-fa", "on", "--fit-print", "on", "-v"],
        env=env, capture_output=True, text=True, check=True, timeout=300)
    layers = {}
    for m in re.finditer(r"layer\s+(\d+) assigned to device (\S+),", out.stderr + out.stdout):
        layers[int(m.group(1))] = m.group(2)
    sizes = {}
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[0] in ("RPC0", "RPC1", "Host"):
            sizes[f[0]] = {"model_mib": int(f[1]), "context_mib": int(f[2]), "compute_mib": int(f[3])}
    # llama.cpp counts the output as layer n_layer: its device holds the output tensor.
    n_layer = max(layers)
    devices = []
    for i, dev in enumerate(["RPC0", "RPC1"]):
        mine = sorted(il for il, d in layers.items() if d == dev and il < n_layer)
        devices.append({"device": f"cuda:{i}", "llama_cpp_device": dev, "layers": [mine[0], mine[-1] + 1],
                        "output": layers[n_layer] == dev, **sizes[dev]})
    return {"n_layer": n_layer, "devices": devices, "host": sizes["Host"]}


def main() -> None:
    llmd, bindir = sys.argv[1], sys.argv[2]
    env = dict(os.environ, LD_LIBRARY_PATH=bindir)
    servers = [subprocess.Popen([os.path.join(bindir, "ggml-rpc-server"), "-p", str(p)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in PORTS]
    time.sleep(2)
    try:
        out = {"ctx": CTX, "split": [1, 1], "models": []}
        with tempfile.TemporaryDirectory() as tmp:
            for name, args in MODELS:
                path = os.path.join(tmp, "model.gguf")
                subprocess.run([llmd, "make-model", *args, "--header-only", "-o", path], check=True, capture_output=True)
                size = full_size(path)
                with open(path, "r+b") as f:
                    f.truncate(size)
                runs = {cache: llama_cpp_plan(bindir, path, cache) for cache in CACHE_TYPES}
                out["models"].append({"name": name, "make_model": args, "file_bytes": size, "llama_cpp": runs})
                os.remove(path)
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    finally:
        for s in servers:
            s.terminate()


if __name__ == "__main__":
    main()
