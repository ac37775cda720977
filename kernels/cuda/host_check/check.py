"""Checks the CUDA kernels' block arithmetic on the host (no GPU): builds emulate.cpp (the
kernels compiled as plain C++) and compares its dequantize, get_rows and mmvq dot-product
results with the `gguf` package's dequantizers, and its rope / GeGLU / SwiGLU with numpy
formulas. Usage: python check.py EMULATE_BINARY WORK_DIR (run by scripts/check-cuda-kernels)."""
import pathlib
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

emulate = sys.argv[1]
work = pathlib.Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(7)

# name: (gguf type, block weights, block bytes, byte offsets of f16 scale fields)
TYPES = {
    "q4_0": (T.Q4_0, 32, 18, [0]),
    "q5_0": (T.Q5_0, 32, 22, [0]),
    "q8_0": (T.Q8_0, 32, 34, [0]),
    "q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "q6_K": (T.Q6_K, 256, 210, [208]),
}
failures = []


def run(*args):
    subprocess.run([emulate, *map(str, args)], check=True, timeout=60)


def random_blocks(name, n_blocks):
    """Random quant bytes with finite, moderate f16 scales."""
    _, _, nbytes, scale_offsets = TYPES[name]
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for off in scale_offsets:
        scales = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def reference(name, raw, cols):
    ty = TYPES[name][0]
    return quants.dequantize(raw.reshape(-1, cols // TYPES[name][1] * TYPES[name][2]), ty)


def compare(what, got, want, tol):
    err = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))
    scale = max(1e-30, float(np.max(np.abs(want))))
    if not np.all(np.isfinite(got)) or err > tol * scale:
        failures.append(f"{what}: max abs error {err:.3g} (scale {scale:.3g}, tolerance {tol})")
    else:
        print(f"ok  {what}: max abs error {err:.3g} (scale {scale:.3g})")


def q8_1(x):
    """Activations (n,) -> Q8_1 bytes, as quantize_q8_1 (d = amax / 127, q = round(x / d))."""
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.max(np.abs(blocks), axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(blocks * inv[:, None]).astype(np.int8)
    s = (d * q.astype(np.int32).sum(axis=1)).astype(np.float16)
    out = np.zeros((blocks.shape[0], 36), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = s.view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q.view(np.uint8)
    yq = q.astype(np.float64) * d.astype(np.float16).astype(np.float64)[:, None]
    return out, yq.reshape(-1)


rows, cols = 6, 512
for name in TYPES:
    raw = random_blocks(name, rows * cols // TYPES[name][1])
    want = reference(name, raw, cols).reshape(rows, cols)
    (work / "w.bin").write_bytes(raw.tobytes())
    run("dequantize", name, work / "w.bin", work / "deq.bin", rows * cols)
    got = np.fromfile(work / "deq.bin", dtype=np.float32).reshape(rows, cols)
    compare(f"dequantize_{name}_f32", got, want, 1e-6)

    ids = np.array([3, 0, 5, 3], dtype=np.uint32)
    (work / "ids.bin").write_bytes(ids.tobytes())
    run("get_rows", name, work / "w.bin", work / "rows.bin", cols, work / "ids.bin", 0.5)
    got = np.fromfile(work / "rows.bin", dtype=np.float32).reshape(len(ids), cols)
    compare(f"get_rows_{name}", got, want[ids] * 0.5, 1e-6)

    x = rng.standard_normal(cols).astype(np.float32)
    yraw, yq = q8_1(x)
    (work / "y.bin").write_bytes(yraw.tobytes())
    run("dot", name, work / "w.bin", work / "dot.bin", work / "y.bin", rows, cols)
    got = np.fromfile(work / "dot.bin", dtype=np.float64)
    want_dot = want.astype(np.float64) @ yq
    err = np.max(np.abs(got - want_dot))
    bound = np.max(np.abs(want.astype(np.float64)) @ np.abs(yq))
    if err > 1e-5 * bound:
        failures.append(f"mul_mat_vec_{name}_q8_1 item dots: error {err:.3g} (bound {bound:.3g})")
    else:
        print(f"ok  mul_mat_vec_{name}_q8_1 item dots: max abs error {err:.3g} (sum |w y| {bound:.3g})")

for name, ty in [("f32", np.float32), ("f16", np.float16)]:
    table = rng.standard_normal((6, 64)).astype(ty)
    (work / "w.bin").write_bytes(table.tobytes())
    ids = np.array([5, 1], dtype=np.uint32)
    (work / "ids.bin").write_bytes(ids.tobytes())
    run("get_rows", name, work / "w.bin", work / "rows.bin", 64, work / "ids.bin", 2.0)
    got = np.fromfile(work / "rows.bin", dtype=np.float32).reshape(2, 64)
    compare(f"get_rows_{name}", got, table[ids].astype(np.float32) * 2.0, 1e-6)


def rope_ref(x, pos, n_dims, base, fs, neox):
    x = x.astype(np.float64).copy()
    half = n_dims // 2
    for t, p in enumerate(pos):
        for i in range(half):
            theta = p * fs * base ** (-2.0 * i / n_dims)
            c, s = np.cos(theta), np.sin(theta)
            a_idx, b_idx = (i, i + half) if neox else (2 * i, 2 * i + 1)
            a, b = x[t, :, a_idx].copy(), x[t, :, b_idx].copy()
            x[t, :, a_idx] = a * c - b * s
            x[t, :, b_idx] = a * s + b * c
    return x


n_heads, head_dim = 3, 64
pos = np.array([0, 1, 17, 300], dtype=np.uint32)
for neox in (0, 1):
    for n_dims in (64, 32):
        x = rng.standard_normal((len(pos), n_heads, head_dim)).astype(np.float32)
        (work / "x.bin").write_bytes(x.tobytes())
        (work / "pos.bin").write_bytes(pos.tobytes())
        run("rope", "f32", work / "x.bin", work / "rope.bin", work / "pos.bin", n_heads, head_dim,
            n_dims, 10000.0, 0.5, neox)
        got = np.fromfile(work / "rope.bin", dtype=np.float32).reshape(x.shape)
        compare(f"rope_f32 neox={neox} n_dims={n_dims}", got,
                rope_ref(x, pos, n_dims, 10000.0, 0.5, neox), 1e-4)

gate = rng.standard_normal(1000).astype(np.float32) * 4
up = rng.standard_normal(1000).astype(np.float32)
(work / "glu.bin").write_bytes(gate.tobytes() + up.tobytes())
g = gate.astype(np.float64)
refs = {
    "gelu": 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * g * (1 + 0.044715 * g * g))) * up,
    "silu": g / (1 + np.exp(-g)) * up,
}
for act, want in refs.items():
    run("glu", act, work / "glu.bin", work / "glu_out.bin")
    compare(f"{act} * up", np.fromfile(work / "glu_out.bin", dtype=np.float32), want, 1e-5)

if failures:
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    sys.exit(f"host emulation: {len(failures)} checks failed")
print("host emulation: all checks passed")
