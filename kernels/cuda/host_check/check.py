"""Checks the CUDA kernels' block arithmetic on the host (no GPU): builds emulate.cpp (the
kernels compiled as plain C++) and compares its dequantize, get_rows and mmvq dot-product
results for every weight type with the `gguf` package's dequantizers (dequantization bit for
bit, every IQ grid entry included), and its rope (with frequency factors, linear scaling and
YaRN) / GeGLU / SwiGLU / softcap with numpy formulas. Usage: python check.py EMULATE_BINARY WORK_DIR (run by scripts/check-cuda-kernels)."""
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

# name: (gguf type, block weights, block bytes, byte offsets of f16 scale fields); every type of
# LLMD_QUANT_TYPES (kernels/cuda/types.cuh). IQ1_M and MXFP4 have no plain f16 scale (see
# random_blocks).
TYPES = {
    "q4_0": (T.Q4_0, 32, 18, [0]),
    "q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "q5_0": (T.Q5_0, 32, 22, [0]),
    "q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "q8_0": (T.Q8_0, 32, 34, [0]),
    "q2_K": (T.Q2_K, 256, 84, [80, 82]),
    "q3_K": (T.Q3_K, 256, 110, [108]),
    "q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "q6_K": (T.Q6_K, 256, 210, [208]),
    "iq2_xxs": (T.IQ2_XXS, 256, 66, [0]),
    "iq2_xs": (T.IQ2_XS, 256, 74, [0]),
    "iq2_s": (T.IQ2_S, 256, 82, [0]),
    "iq3_xxs": (T.IQ3_XXS, 256, 98, [0]),
    "iq3_s": (T.IQ3_S, 256, 110, [0]),
    "iq1_s": (T.IQ1_S, 256, 50, [0]),
    "iq1_m": (T.IQ1_M, 256, 56, []),
    "iq4_nl": (T.IQ4_NL, 32, 18, [0]),
    "iq4_xs": (T.IQ4_XS, 256, 136, [0]),
    "tq1_0": (T.TQ1_0, 256, 54, [52]),
    "tq2_0": (T.TQ2_0, 256, 66, [64]),
    "mxfp4": (T.MXFP4, 32, 17, []),
}
# Types whose dot products round their scale products in integers as llama.cpp's CUDA code does
# (vecdot_iq.cuh): the most each 32-weight sub-block's integer sum may lose, in units of
# d (weight block) * d (Q8_1 block). IQ2_XXS truncates sumi * ls / 8 once (< 1); IQ2_XS and
# IQ2_S truncate (sumi0 + sumi1) / 2 before dividing by 4, then the quotient (< 1/4 + 1);
# IQ3_XXS truncates sumi / 2, then halves and truncates (< 1/2 + 1).
ROUNDED = {"iq2_xxs": 1.0, "iq2_xs": 1.25, "iq2_s": 1.25, "iq3_xxs": 1.5}
failures = []


def run(*args):
    subprocess.run([emulate, *map(str, args)], check=True, timeout=60)


def f16_bytes(values):
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(name, n_blocks):
    """Random quant bytes with finite, moderate scales."""
    _, _, nbytes, scale_offsets = TYPES[name]
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for off in scale_offsets:
        raw[:, off:off + 2] = f16_bytes(rng.uniform(0.001, 0.05, size=n_blocks))
    if name == "iq1_m":
        # The f16 scale's four nibbles are the top nibbles of the u16 words at bytes 48..56.
        bits = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16).view(np.uint16)
        words = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((bits >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    if name == "mxfp4":
        raw[:, 0] = rng.integers(118, 132, size=n_blocks)  # 2^(e - 128): 2^-10 .. 2^3
    return raw


def set_grid_indices(name, raw, idx):
    """Writes grid index idx[b, g] into group g of block b (the bit fields dequantize.cuh reads)."""
    n_groups = idx.shape[1]
    for g in range(n_groups):
        i = idx[:, g].astype(np.uint32)
        if name == "iq2_xxs":  # one byte per group: qs bytes 8(g / 4) + g % 4
            raw[:, 2 + 8 * (g // 4) + g % 4] = i
        elif name == "iq2_xs":  # low 9 bits of the u16 qs[g]
            word = raw[:, 2 + 2 * g].astype(np.uint32) | (raw[:, 3 + 2 * g].astype(np.uint32) << 8)
            word = (word & ~np.uint32(511)) | i
            raw[:, 2 + 2 * g], raw[:, 3 + 2 * g] = word & 0xFF, word >> 8
        elif name == "iq2_s":  # qs[g] and bits 2(g % 4).. of qh[g / 4]
            raw[:, 2 + g] = i & 0xFF
            qh = raw[:, 66 + g // 4] & ~np.uint8(3 << (2 * (g % 4)))
            raw[:, 66 + g // 4] = qh | ((i >> 8) << (2 * (g % 4))).astype(np.uint8)
        elif name == "iq3_xxs":  # qs[g], g = 0..63
            raw[:, 2 + g] = i
        elif name == "iq3_s":  # qs[g] and bit g % 8 of qh[g / 8]
            raw[:, 2 + g] = i & 0xFF
            qh = raw[:, 66 + g // 8] & ~np.uint8(1 << (g % 8))
            raw[:, 66 + g // 8] = qh | ((i >> 8) << (g % 8)).astype(np.uint8)
        elif name in ("iq1_s", "iq1_m"):
            raw[:, g if name == "iq1_m" else 2 + g] = i & 0xFF
            if name == "iq1_s":  # bits 3(g % 4).. of the u16 qh[g / 4]
                at = 34 + 2 * (g // 4)
                word = raw[:, at].astype(np.uint32) | (raw[:, at + 1].astype(np.uint32) << 8)
                word = (word & ~np.uint32(7 << (3 * (g % 4)))) | ((i >> 8) << (3 * (g % 4)))
                raw[:, at], raw[:, at + 1] = word & 0xFF, word >> 8
            else:  # the low 3 bits of nibble g % 2 of qh[g / 2]
                at = 32 + g // 2
                qh = raw[:, at] & ~np.uint8(7 << (4 * (g % 2)))
                raw[:, at] = qh | ((i >> 8) << (4 * (g % 2))).astype(np.uint8)
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


def q8_1_values(yraw):
    """Q8_1 bytes -> (d, s, q) per block, as float64 / int arrays."""
    blocks = yraw.reshape(-1, 36)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64).reshape(-1)
    s = blocks[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
    q = blocks[:, 4:].copy().view(np.int8).astype(np.int64)
    return d, s, q


def rounding_allowance(name, raw, yraw, cols):
    """(n_tokens, rows): how far the kernels may lawfully be from the exact product of the
    dequantized weights and the Q8_1 activations, beyond float rounding: the integer scale products
    of ROUNDED types (ROUNDED[name] * |d_w| * |d_y| per 32-weight sub-block), and for the types that
    use Q8_1's s = f16(d * sum(q)) instead of the exact sum (the min term of Q4_1 / Q5_1, IQ1_S's
    shift) the coefficient times |s - d * sum(q)| per sub-block."""
    y_d, y_s, y_q = q8_1_values(yraw)
    per_sub = cols // 32
    s_err = np.abs(y_s - y_d * y_q.sum(axis=1)).reshape(-1, per_sub)
    y_d = np.abs(y_d).reshape(-1, per_sub)
    nbytes = TYPES[name][2]
    blocks = raw.reshape(-1, nbytes)
    f16_at = lambda off: np.abs(blocks[:, off:off + 2].copy().view(np.float16).astype(np.float64)).reshape(-1)
    if name in ROUNDED:
        w_d = np.repeat(f16_at(0).reshape(-1, cols // 256), 8, axis=1)  # per 32-weight sub-block
        return ROUNDED[name] * (y_d @ w_d.T)
    if name in ("q4_1", "q5_1"):
        return s_err @ f16_at(2).reshape(-1, per_sub).T
    if name == "iq1_s":
        qh = blocks[:, 34:50].copy().view(np.uint16).astype(np.int64)  # (blocks, 8)
        dl = f16_at(0)[:, None] * (2 * ((qh >> 12) & 7) + 1)
        return s_err @ (dl * (1 + 0.125)).reshape(-1, per_sub).T
    return np.zeros((y_d.shape[0], 1))


rows, cols = 6, 512
for name in TYPES:
    raw = random_blocks(name, rows * cols // TYPES[name][1])
    want = reference(name, raw, cols).reshape(rows, cols)
    (work / "w.bin").write_bytes(raw.tobytes())
    run("dequantize", name, work / "w.bin", work / "deq.bin", rows * cols)
    got = np.fromfile(work / "deq.bin", dtype=np.float32).reshape(rows, cols)
    compare(f"dequantize_{name}_f32", got, want, 0)

    ids = np.array([3, 0, 5, 3], dtype=np.uint32)
    (work / "ids.bin").write_bytes(ids.tobytes())
    run("get_rows", name, work / "w.bin", work / "rows.bin", cols, work / "ids.bin", 0.5)
    got = np.fromfile(work / "rows.bin", dtype=np.float32).reshape(len(ids), cols)
    compare(f"get_rows_{name}", got, want[ids] * 0.5, 0)

    x = rng.standard_normal(cols).astype(np.float32)
    yraw, yq = q8_1(x)
    (work / "y.bin").write_bytes(yraw.tobytes())
    run("dot", name, work / "w.bin", work / "dot.bin", work / "y.bin", rows, cols)
    got = np.fromfile(work / "dot.bin", dtype=np.float64)
    want_dot = want.astype(np.float64) @ yq
    err = np.max(np.abs(got - want_dot))
    bound = np.max(np.abs(want.astype(np.float64)) @ np.abs(yq))
    excess = np.abs(got - want_dot) - rounding_allowance(name, raw, yraw, cols)[0]
    allowed = 1e-5 * bound
    if np.max(excess) > allowed:
        failures.append(f"mul_mat_vec_{name}_q8_1 item dots: error {err:.3g}, "
                        f"{np.max(excess):.3g} beyond the rounding allowance (bound {allowed:.3g})")
    else:
        print(f"ok  mul_mat_vec_{name}_q8_1 item dots: max abs error {err:.3g}, "
              f"{max(0.0, np.max(excess)):.3g} beyond the rounding allowance (sum |w y| {bound:.3g})")

    # The int8 form of mmq.cu (int8.cuh): scale * q + offset is dequantize's value, bit for bit.
    run("unpack", name, work / "w.bin", work / "unpack.bin", rows * cols)
    got = np.fromfile(work / "unpack.bin", dtype=np.float32).reshape(rows, cols)
    compare(f"int8w<{name}>::unpack8", got, want, 0)

# Every entry of every IQ grid: blocks whose groups use grid indices 0, 1, 2, ... in turn.
GRIDS = {  # name: (grid entries, grid-indexed groups per block)
    "iq2_xxs": (256, 32), "iq2_xs": (512, 32), "iq2_s": (1024, 32), "iq3_xxs": (256, 64),
    "iq3_s": (512, 64), "iq1_s": (2048, 32), "iq1_m": (2048, 32),
}
for name, (entries, per_block) in GRIDS.items():
    n_blocks = entries // per_block
    idx = np.arange(entries).reshape(n_blocks, per_block)
    raw = set_grid_indices(name, random_blocks(name, n_blocks), idx)
    (work / "w.bin").write_bytes(raw.tobytes())
    n = n_blocks * 256
    run("dequantize", name, work / "w.bin", work / "deq.bin", n)
    got = np.fromfile(work / "deq.bin", dtype=np.float32)
    compare(f"dequantize_{name}_f32, all {entries} grid entries", got, reference(name, raw, 256).reshape(-1), 0)
    run("unpack", name, work / "w.bin", work / "unpack.bin", n)
    got = np.fromfile(work / "unpack.bin", dtype=np.float32)
    compare(f"int8w<{name}>::unpack8, all {entries} grid entries", got, reference(name, raw, 256).reshape(-1), 0)

# quantize_mmq and the int8 tensor-core products (mmq.cu): 70 tokens (two token tiles) by 72
# rows (two row tiles) of 416 columns for the 32-weight block types (three 128-value k slices and
# a partial one) and 768 for the others, activations with outliers beyond f16's range. The
# products must equal the exact product of the dequantized weights and the kernel's own 8-bit
# activations up to f32 rounding.
mq_rows, mq_tokens = 72, 70
for name in TYPES:
    mq_cols = 416 if TYPES[name][1] == 32 else 768
    xm = rng.standard_normal((mq_tokens, mq_cols)).astype(np.float32)
    xm[rng.random(xm.shape) < 1 / 64] = 1.0e5
    xm[:, :32] = 0.0  # an all-zero block (scale 0)
    (work / "xm.bin").write_bytes(xm.tobytes())
    raw = random_blocks(name, mq_rows * mq_cols // TYPES[name][1])
    want_w = reference(name, raw, mq_cols).reshape(mq_rows, mq_cols).astype(np.float64)
    (work / "w.bin").write_bytes(raw.tobytes())
    run("mmq", name, work / "w.bin", work / "mmq.bin", work / "xm.bin", mq_rows, mq_cols, mq_tokens)
    blob = np.fromfile(work / "mmq.bin", dtype=np.uint8)
    n_out, n_x = mq_tokens * mq_rows, mq_tokens * mq_cols
    got = blob[:4 * n_out].view(np.float32).reshape(mq_tokens, mq_rows)
    q = blob[4 * n_out:4 * n_out + n_x].view(np.int8).reshape(mq_tokens, mq_cols // 32, 32)
    d = blob[4 * n_out + n_x:4 * n_out + n_x + n_x // 8].view(np.float32).reshape(mq_tokens, -1)
    s = blob[4 * n_out + n_x + n_x // 8:].view(np.float32).reshape(mq_tokens, -1)
    if name == "q4_0":
        # quantize_mmq itself: d = amax / 127, q = round(x / d) (at most one step off where x / d
        # lands on .5), s = d * sum(q) per 16 values.
        blocks = xm.reshape(mq_tokens, -1, 32)
        want_d = (np.max(np.abs(blocks), axis=2) / np.float32(127)).astype(np.float32)
        safe = np.where(want_d > 0, want_d, 1)[..., None]
        want_q = np.where(want_d[..., None] > 0, np.rint(blocks / safe), 0)
        want_s = (q.reshape(mq_tokens, -1, 16).astype(np.float64).sum(axis=2) *
                  np.repeat(d, 2, axis=1))
        if (not np.array_equal(d, want_d) or np.max(np.abs(q - want_q)) > 1
                or np.max(np.abs(s - want_s)) > 1e-6 * np.max(np.abs(want_s))):
            failures.append("quantize_mmq: scales, values or sums differ from the reference")
        else:
            print(f"ok  quantize_mmq: scales equal, {np.count_nonzero(q != want_q)} values off by one")
    xq = (q.astype(np.float64) * d[..., None].astype(np.float64)).reshape(mq_tokens, mq_cols)
    compare(f"mul_mat_q_{name} kernel", got, xq @ want_w.T, 1e-5)


def bf16_table(shape):
    """Random bf16 values: (bits as u16, their f32 values)."""
    bits = (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


for name in ("f32", "f16", "bf16"):
    if name == "bf16":
        stored, table = bf16_table((6, 64))
    else:
        stored = rng.standard_normal((6, 64)).astype(np.float32 if name == "f32" else np.float16)
        table = stored.astype(np.float32)
    (work / "w.bin").write_bytes(stored.tobytes())
    ids = np.array([5, 1], dtype=np.uint32)
    (work / "ids.bin").write_bytes(ids.tobytes())
    run("get_rows", name, work / "w.bin", work / "rows.bin", 64, work / "ids.bin", 2.0)
    got = np.fromfile(work / "rows.bin", dtype=np.float32).reshape(2, 64)
    compare(f"get_rows_{name}", got, table[ids] * 2.0, 0)
    if name != "f32":
        run("dequantize", name, work / "w.bin", work / "deq.bin", table.size)
        compare(f"dequantize_{name}_f32", np.fromfile(work / "deq.bin", dtype=np.float32),
                table.reshape(-1), 0)


def yarn_corr_dims(n_dims, n_ctx_orig, base, beta_fast=32.0, beta_slow=1.0):
    """ggml_rope_yarn_corr_dims: the pairs over which YaRN ramps from extrapolation to
    interpolation."""
    def corr_dim(n_rot):
        return n_dims * np.log(n_ctx_orig / (n_rot * 2 * np.pi)) / (2 * np.log(base))
    return max(0.0, np.floor(corr_dim(beta_fast))), min(n_dims - 1.0, np.ceil(corr_dim(beta_slow)))


def rope_ref(x, pos, n_dims, base, fs, neox, factors=None, ext=0.0, attn=1.0, corr=(0.0, 0.0)):
    """ggml's rope_ext in float64: frequency factors, linear scaling, YaRN ramp and magnitude."""
    x = x.astype(np.float64).copy()
    half = n_dims // 2
    for t, p in enumerate(pos):
        for i in range(half):
            extrap = p * base ** (-2.0 * i / n_dims) / (1.0 if factors is None else factors[i])
            interp = fs * extrap
            theta, mscale = interp, attn
            if ext != 0.0:
                ramp = 1.0 - min(1.0, max(0.0, (i - corr[0]) / max(0.001, corr[1] - corr[0])))
                mix = ramp * ext
                theta = interp * (1 - mix) + extrap * mix
                mscale *= 1.0 + 0.1 * np.log(1.0 / fs)
            c, s = np.cos(theta) * mscale, np.sin(theta) * mscale
            a_idx, b_idx = (i, i + half) if neox else (2 * i, 2 * i + 1)
            a, b = x[t, :, a_idx].copy(), x[t, :, b_idx].copy()
            x[t, :, a_idx] = a * c - b * s
            x[t, :, b_idx] = a * s + b * c
    return x


n_heads, head_dim = 3, 64
pos = np.array([0, 1, 17, 300], dtype=np.uint32)
(work / "pos.bin").write_bytes(pos.tobytes())
rope_factors = (1.0 + 7.0 * np.arange(32) / 31.0).astype(np.float32)
(work / "ff.bin").write_bytes(rope_factors.tobytes())
# name, neox, n_dims, base, freq_scale, factors, ext_factor, attn_factor, YaRN n_ctx_orig
rope_cases = [
    ("plain", 0, 64, 10000.0, 0.5, None, 0.0, 1.0, 0),
    ("plain", 1, 64, 10000.0, 0.5, None, 0.0, 1.0, 0),
    ("plain", 0, 32, 10000.0, 0.5, None, 0.0, 1.0, 0),
    ("plain", 1, 32, 10000.0, 0.5, None, 0.0, 1.0, 0),
    ("factors attn_factor", 0, 64, 500000.0, 1.0, rope_factors, 0.0, 1.2, 0),
    ("yarn", 1, 64, 10000.0, 0.25, None, 1.0, 0.9, 64),
    ("yarn factors", 0, 64, 1000000.0, 0.125, rope_factors, 1.0, 1.0, 4096),
    ("yarn partial", 1, 32, 10000.0, 0.25, None, 1.0, 1.0, 256),
]
for what, neox, n_dims, base, fs, factors, ext, attn, n_orig in rope_cases:
    x = rng.standard_normal((len(pos), n_heads, head_dim)).astype(np.float32)
    (work / "x.bin").write_bytes(x.tobytes())
    corr = yarn_corr_dims(n_dims, n_orig, base) if ext != 0.0 else (0.0, 0.0)
    run("rope", "f32", work / "x.bin", work / "rope.bin", work / "pos.bin",
        "-" if factors is None else work / "ff.bin", n_heads, head_dim, n_dims, base, fs, ext, attn,
        corr[0], corr[1], neox)
    got = np.fromfile(work / "rope.bin", dtype=np.float32).reshape(x.shape)
    compare(f"rope_f32 {what} neox={neox} n_dims={n_dims}", got,
            rope_ref(x, pos, n_dims, base, fs, neox, factors, ext, attn, corr), 1e-4)

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
q81_raw = got
want_raw, yq = q8_1(x.reshape(-1))
# Rounding of x / d may differ by one step where x / d lands on .5 (division vs reciprocal).
got_q = got.reshape(-1, 36)[:, 4:].view(np.int8).astype(np.int32)
want_q = want_raw.reshape(-1, 36)[:, 4:].view(np.int8).astype(np.int32)
same_d = np.array_equal(got.reshape(-1, 36)[:, :2], want_raw.reshape(-1, 36)[:, :2])
if not same_d or np.max(np.abs(got_q - want_q)) > 1:
    failures.append("quantize_q8_1: scales or quants differ from the Q8_1 reference")
else:
    print(f"ok  quantize_q8_1: scales equal, {np.count_nonzero(got_q != want_q)} quants off by one")
# The mmvq kernels read the kernel's own Q8_1 blocks: the reference uses those.
got_d, _, got_q = q8_1_values(got)
yq = (got_q * got_d[:, None]).reshape(n_tokens, cols)
for name in TYPES:
    raw = random_blocks(name, rows * cols // TYPES[name][1])
    want_w = reference(name, raw, cols).reshape(rows, cols).astype(np.float64)
    (work / "w.bin").write_bytes(raw.tobytes())
    run("mmvq", name, work / "w.bin", work / "mm.bin", work / "q81.bin", rows, cols, n_tokens)
    got = np.fromfile(work / "mm.bin", dtype=np.float32).reshape(n_tokens, rows)
    # Within the rounding allowance of the exact product, up to float rounding (1e-5 of the
    # largest output).
    want_mm = yq @ want_w.T
    allowance = rounding_allowance(name, raw, q81_raw, cols)
    diff = got.astype(np.float64) - want_mm
    lawful = want_mm + np.sign(diff) * np.minimum(np.abs(diff), allowance)
    compare(f"mul_mat_vec_{name}_q8_1 kernel", got, lawful, 1e-5)

for name in ("f32", "f16", "bf16"):
    if name == "bf16":
        stored, w = bf16_table((rows, cols))
    else:
        stored = rng.standard_normal((rows, cols)).astype(np.float32 if name == "f32" else np.float16)
        w = stored
    (work / "w.bin").write_bytes(stored.tobytes())
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
run("simple", "softcap", work / "a.bin", work / "s.bin", 0.5)
compare("softcap_f32", np.fromfile(work / "s.bin", dtype=np.float32),
        np.tanh(a.astype(np.float64) / 0.5) * 0.5, 1e-6)
# Rows within f16's range convert exactly; a row with values up to 1e5 is scaled by 2^-2.
rows16 = rng.standard_normal((3, 300)).astype(np.float32)
rows16[1, 7] = -1.0e5
rows16[2, :] *= 32768.0 / np.max(np.abs(rows16[2, :]))
(work / "r16.bin").write_bytes(rows16.tobytes())
run("f16_rows", "f32", work / "r16.bin", work / "s.bin", 300)
blob = np.fromfile(work / "s.bin", dtype=np.uint8)
got_h = blob[:3 * 300 * 2].view(np.float16).reshape(3, 300)
got_s = blob[3 * 300 * 2:].view(np.float32)
want_s = np.array([1.0, 4.0, 1.0], dtype=np.float32)
compare("convert_f32_to_f16_rows scales", got_s, want_s, 0)
compare("convert_f32_to_f16_rows", got_h, (rows16 / want_s[:, None]).astype(np.float16), 0)


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
    # a GQA group of 12 query heads: two decode blocks per KV head (8 + 4 heads)
    ("decode", 24, 2, 64, np.array([150, 9]), 0, 0.0, 3, "f16", "f16"),
    ("decode", 24, 2, 64, np.array([150]), 0, 0.0, 2, "q8_0", "q4_0"),
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
