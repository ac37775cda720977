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

# quantize_q8_1 (whole warps per block) and the full mmvq kernels: 10 tokens (a full group of 8
# and a partial one), rows not a multiple of the 4 rows per thread block.
rows, cols, n_tokens = 7, 512, 10
x = (rng.standard_normal((n_tokens, cols)) * 3).astype(np.float32)
x[0, :32] = 0.0  # an all-zero block: d = 0, q = 0
(work / "x.bin").write_bytes(x.tobytes())
run("quantize_q8_1", "f32", work / "x.bin", work / "q81.bin")
got = np.fromfile(work / "q81.bin", dtype=np.uint8)
want_raw, yq = q8_1(x.reshape(-1))
# Rounding of x / d may differ by one step where x / d lands on .5 (division vs reciprocal).
got_q = got.reshape(-1, 36)[:, 4:].view(np.int8).astype(np.int32)
want_q = want_raw.reshape(-1, 36)[:, 4:].view(np.int8).astype(np.int32)
same_d = np.array_equal(got.reshape(-1, 36)[:, :2], want_raw.reshape(-1, 36)[:, :2])
if not same_d or np.max(np.abs(got_q - want_q)) > 1:
    failures.append("quantize_q8_1: scales or quants differ from the Q8_1 reference")
else:
    print(f"ok  quantize_q8_1: scales equal, {np.count_nonzero(got_q != want_q)} quants off by one")
yq = yq.reshape(n_tokens, cols)
for name in TYPES:
    raw = random_blocks(name, rows * cols // TYPES[name][1])
    want_w = reference(name, raw, cols).reshape(rows, cols).astype(np.float64)
    (work / "w.bin").write_bytes(raw.tobytes())
    run("mmvq", name, work / "w.bin", work / "mm.bin", work / "q81.bin", rows, cols, n_tokens)
    got = np.fromfile(work / "mm.bin", dtype=np.float32).reshape(n_tokens, rows)
    compare(f"mul_mat_vec_{name}_q8_1 kernel", got, yq @ want_w.T, 1e-5)
    run("dequantize_f16", name, work / "w.bin", work / "d16.bin", rows * cols)
    got = np.fromfile(work / "d16.bin", dtype=np.float16).reshape(rows, cols)
    compare(f"dequantize_{name}_f16", got, want_w.astype(np.float16), 0)

for name, ty in [("f32", np.float32), ("f16", np.float16)]:
    w = rng.standard_normal((rows, cols)).astype(ty)
    (work / "w.bin").write_bytes(w.tobytes())
    run("mmv", name, work / "w.bin", work / "mm.bin", work / "x.bin", rows, cols, n_tokens)
    got = np.fromfile(work / "mm.bin", dtype=np.float32).reshape(n_tokens, rows)
    compare(f"mul_mat_vec_{name}", got, x.astype(np.float64) @ w.astype(np.float64).T, 1e-5)

for dim, threads in [(640, 256), (100, 64)]:
    xs = rng.standard_normal((3, dim)).astype(np.float32)
    wn = rng.standard_normal(dim).astype(np.float32)
    (work / "x.bin").write_bytes(xs.tobytes())
    (work / "wn.bin").write_bytes(wn.tobytes())
    run("rms_norm", "f32", work / "x.bin", work / "rn.bin", work / "wn.bin", 3, dim, 1e-6, threads)
    got = np.fromfile(work / "rn.bin", dtype=np.float32).reshape(3, dim)
    x64 = xs.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + 1e-6) * wn
    compare(f"rms_norm_f32 dim={dim}", got, want, 1e-5)

M, N, K, ldo = 70, 67, 45, 80
xg = rng.standard_normal((M, K)).astype(np.float32)
wg = rng.standard_normal((N, K)).astype(np.float32)
(work / "x.bin").write_bytes(xg.tobytes())
(work / "w.bin").write_bytes(wg.tobytes())
run("gemm", "f32", work / "x.bin", work / "gemm.bin", work / "w.bin", M, N, K, ldo)
got = np.fromfile(work / "gemm.bin", dtype=np.float32).reshape(M, ldo)
want = np.zeros((M, ldo))
want[:, :N] = xg.astype(np.float64) @ wg.astype(np.float64).T
compare("gemm_f32_nt", got, want, 1e-5)

def kv_q8_0(x):
    """Rows -> Q8_0 bytes as ggml-cpu's x86 quantize_row_q8_0 (the CPU backend's KV store):
    d = amax / 127 as f16, q = round-half-even(x * (127 / amax)), all in f32."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.max(np.abs(b), axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(b * inv[:, None]).astype(np.int8)
    out = np.zeros((b.shape[0], 34), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out


def kv_q4_0(x):
    """Rows -> Q4_0 bytes as ggml's quantize_row_q4_0_ref: d = m / -8 (m the first value of
    largest magnitude), q = min(15, trunc(x * (1 / d) + 8.5)), all in f32."""
    b = x.reshape(-1, 32).astype(np.float32)
    m = b[np.arange(b.shape[0]), np.argmax(np.abs(b), axis=1)]
    d = (m / np.float32(-8)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, np.maximum(0, np.trunc(b * inv[:, None] + np.float32(8.5)))).astype(np.uint8)
    out = np.zeros((b.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out


KV_TYPES = {"f16": None, "q8_0": (T.Q8_0, kv_q8_0), "q4_0": (T.Q4_0, kv_q4_0)}

width, capacity = 320, 10
src = rng.standard_normal((3, width)).astype(np.float32)
src[1, 32:64] = 0.0  # an all-zero block: d = 0, q = 0 (q4_0: 8)
kv_pos = np.array([4, 0, 9], dtype=np.uint32)
(work / "x.bin").write_bytes(src.tobytes())
(work / "pos.bin").write_bytes(kv_pos.tobytes())
for name, spec in KV_TYPES.items():
    run("kv_store", name, work / "x.bin", work / "kv.bin", work / "pos.bin", width, capacity)
    raw = np.fromfile(work / "kv.bin", dtype=np.uint8)
    if spec is None:
        got = raw.view(np.float16).reshape(capacity, width)
        want = np.zeros((capacity, width), dtype=np.float16)
        want[kv_pos] = src.astype(np.float16)
        compare("kv_store_f16", got, want, 0)
        continue
    ty, quantizer = spec
    got = raw.reshape(capacity, -1)
    want = np.zeros_like(got)
    want[kv_pos] = quantizer(src).reshape(len(kv_pos), -1)
    if not np.array_equal(got, want):
        failures.append(f"kv_store_{name}: bytes differ from the CPU's quantizer")
        continue
    # The layout is ggml's: gguf's dequantizer reads the input back within a step.
    back = quants.dequantize(got[kv_pos].reshape(len(kv_pos), -1), ty).reshape(src.shape)
    step = np.max(np.abs(src)) / (127 if name == "q8_0" else 7)
    compare(f"kv_store_{name} (bytes equal, dequantized by gguf)", back, src, step / np.max(np.abs(src)))

def fwht(x, n):
    """Chunks of n values rotated as ggml-cpu's fwht, in f32: x / sqrt(n), then butterflies."""
    y = (x.reshape(-1, n).astype(np.float32) * (np.float32(1) / np.sqrt(np.float32(n)))).copy()
    length = 1
    while length < n:
        y = y.reshape(-1, n // (2 * length), 2, length)
        u, v = y[:, :, 0, :].copy(), y[:, :, 1, :].copy()
        y[:, :, 0, :], y[:, :, 1, :] = u + v, u - v
        length *= 2
    return y.reshape(x.shape)


for n in (64, 128, 256):
    xr = rng.standard_normal(3 * n).astype(np.float32)
    (work / "x.bin").write_bytes(xr.tobytes())
    run("kv_rotate", "f32", work / "x.bin", work / "rot.bin", n)
    got = np.fromfile(work / "rot.bin", dtype=np.float32)
    compare(f"kv_rotate_f32 n={n} (ggml's fwht, bit for bit)", got, fwht(xr, n), 0)
    h = np.array([[(-1) ** bin(i & j).count("1") for j in range(n)] for i in range(n)]) / np.sqrt(n)
    compare(f"kv_rotate_f32 n={n} (the Hadamard matrix)", got,
            (xr.reshape(-1, n).astype(np.float64) @ h.T).reshape(-1), 1e-6)

xb = rng.standard_normal((3, 40)).astype(np.float32)
bias = rng.standard_normal(40).astype(np.float32)
(work / "x.bin").write_bytes(xb.tobytes())
(work / "b.bin").write_bytes(bias.tobytes())
run("add_bias", "f32", work / "x.bin", work / "ab.bin", work / "b.bin", 40)
compare("add_bias_f32", np.fromfile(work / "ab.bin", dtype=np.float32).reshape(3, 40), xb + bias, 0)

a = rng.standard_normal(300).astype(np.float32)
b = rng.standard_normal(300).astype(np.float32)
(work / "ab2.bin").write_bytes(a.tobytes() + b.tobytes())
run("simple", "add", work / "ab2.bin", work / "s.bin")
compare("add_f32", np.fromfile(work / "s.bin", dtype=np.float32), a + b, 0)
(work / "a.bin").write_bytes(a.tobytes())
run("simple", "scale", work / "a.bin", work / "s.bin", 0.25)
compare("scale_f32", np.fromfile(work / "s.bin", dtype=np.float32), a * np.float32(0.25), 0)
run("simple", "to_f16", work / "a.bin", work / "s.bin")
compare("convert_f32_to_f16", np.fromfile(work / "s.bin", dtype=np.float16), a.astype(np.float16), 0)


def attention_ref(q, k, v, pos, n_heads, n_kv, scale, window, softcap):
    n_q, _, hd = q.shape
    out = np.zeros((n_q, n_heads, hd))
    group = n_heads // n_kv
    for i in range(n_q):
        p = int(pos[i])
        start = max(0, p - window + 1) if window > 0 else 0
        for h in range(n_heads):
            kk = k[start:p + 1, h // group].astype(np.float64)
            vv = v[start:p + 1, h // group].astype(np.float64)
            s = scale * (kk @ q[i, h].astype(np.float64))
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            e = np.exp(s - s.max())
            out[i, h] = (e / e.sum()) @ vv
    return out


def q8_0_query(x):
    """The query as kernels with quantized keys use it: Q8_0 (kv_q8_0's rounding), dequantized."""
    raw = kv_q8_0(x)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float64)
    return (raw[:, 2:].view(np.int8).astype(np.float64) * d).reshape(x.shape)


def kv_cache(name, shape, garbage_from):
    """A cache of `shape` (capacity, n_kv, head_dim) in type `name`: (bytes, values as read).
    Positions from `garbage_from` hold NaN (f16 values, or block scales) that must never be read
    into a result."""
    x = rng.standard_normal(shape).astype(np.float32)
    if name == "f16":
        h = x.astype(np.float16)
        h[garbage_from:] = np.float16(np.nan)
        return h.tobytes(), h.astype(np.float64)
    ty = KV_TYPES[name][0]
    raw = quants.quantize(x.reshape(shape[0], -1), ty).reshape(shape[0], -1, TYPES[name][2])
    values = quants.dequantize(raw.reshape(shape[0], -1), ty).reshape(shape).astype(np.float64)
    raw[garbage_from:, :, 0:2] = np.array([np.nan], dtype=np.float16).view(np.uint8)
    return raw.tobytes(), values


capacity = 400
cases = [
    # kernel, n_heads, n_kv, head_dim, positions, window, softcap, n_splits, K type, V type
    ("prefill", 4, 2, 64, np.arange(60, 80), 0, 0.0, 1, "f16", "f16"),
    ("prefill", 2, 1, 256, np.arange(0, 11), 5, 30.0, 1, "f16", "f16"),
    ("prefill", 3, 3, 40, np.arange(30, 39), 0, 0.0, 3, "f16", "f16"),
    ("decode", 4, 1, 128, np.array([99, 7]), 0, 0.0, 1, "f16", "f16"),
    ("decode", 4, 2, 64, np.array([95]), 40, 0.0, 4, "f16", "f16"),
    ("decode", 2, 2, 256, np.array([3, 50]), 0, 20.0, 7, "f16", "f16"),
    # several tiles per warp: the running max must rescale earlier tiles
    ("decode", 4, 2, 64, np.array([330]), 0, 0.0, 1, "f16", "f16"),
    ("decode", 2, 1, 128, np.array([350, 200]), 300, 0.0, 2, "f16", "f16"),
    ("prefill", 2, 2, 32, np.arange(200, 204), 0, 0.0, 1, "f16", "f16"),
    # quantized caches: every type as keys and as values, GQA, windows, softcap, splits
    ("prefill", 4, 2, 64, np.arange(60, 80), 0, 0.0, 1, "q8_0", "q8_0"),
    ("prefill", 2, 1, 256, np.arange(0, 11), 5, 30.0, 1, "q4_0", "q4_0"),
    ("prefill", 2, 2, 32, np.arange(200, 204), 0, 0.0, 3, "q8_0", "f16"),
    ("prefill", 4, 1, 128, np.arange(90, 100), 0, 0.0, 1, "f16", "q4_0"),
    ("decode", 4, 1, 128, np.array([99, 7]), 0, 0.0, 1, "q4_0", "q8_0"),
    ("decode", 4, 2, 64, np.array([95]), 40, 0.0, 4, "q8_0", "q4_0"),
    ("decode", 2, 2, 256, np.array([3, 50]), 0, 20.0, 7, "q4_0", "f16"),
    ("decode", 4, 2, 64, np.array([330]), 0, 0.0, 1, "f16", "q8_0"),
    ("decode", 2, 1, 96, np.array([350, 200]), 300, 0.0, 2, "q8_0", "q8_0"),
]
for kernel, n_heads, n_kv, hd, apos, window, softcap, n_splits, kt, vt in cases:
    apos = apos.astype(np.uint32)
    q = rng.standard_normal((len(apos), n_heads, hd)).astype(np.float32)
    k_raw, k = kv_cache(kt, (capacity, n_kv, hd), apos.max() + 1)
    v_raw, v = kv_cache(vt, (capacity, n_kv, hd), apos.max() + 1)
    q_used = q.astype(np.float64) if kt == "f16" else q8_0_query(q)
    scale = 1.0 / np.sqrt(hd)
    (work / "q.bin").write_bytes(q.tobytes())
    (work / "k.bin").write_bytes(k_raw)
    (work / "v.bin").write_bytes(v_raw)
    (work / "pos.bin").write_bytes(apos.tobytes())
    run("attention", kernel, work / "q.bin", work / "att.bin", work / "k.bin", work / "v.bin",
        work / "pos.bin", n_heads, n_kv, hd, scale, window, softcap, n_splits, kt, vt)
    got = np.fromfile(work / "att.bin", dtype=np.float32).reshape(q.shape)
    want = attention_ref(q_used, k, v, apos, n_heads, n_kv, scale, window, softcap)
    compare(f"attn_{kernel}_{kt}_{vt} heads={n_heads}/{n_kv} d={hd} window={window} "
            f"softcap={softcap} splits={n_splits}", got, want, 1e-5)

if failures:
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    sys.exit(f"host emulation: {len(failures)} checks failed")
print("host emulation: all checks passed")
