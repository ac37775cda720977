#!/usr/bin/env python3
"""Generates the committed quantization fixtures in quant/tests/fixtures/.

Usage:
  . ~/.cache/llmd-llama-ref/env.sh   # llama.cpp reference build: python gguf + numpy, libggml-base
  python3 scripts/gen-quant-fixtures.py [--ggml-lib PATH/libggml-base.so] [--out DIR]

Two kinds of file, all little-endian:
  dequant_<TYPE>.bin  b"LQDQ", u32 type id, u32 n_elems, u32 n_bytes, n_bytes of random blocks,
                      n_elems f32: the reference dequantization.
  quant_<TYPE>.bin    b"LQQU", u32 type id, u32 n_elems, u32 n_bytes, n_elems f32 input,
                      n_bytes: the reference quantization.

The committed files were made with gguf 0.19.0 and the ggml vendored in llama-cpp-python 0.3.36.

References: gguf.quants (the `gguf` pip package, 0.19.0) wherever it implements the direction
(every dequantization but Q8_K's, including the IQ, TQ and MXFP4 formats, checked against ggml's
C dequantizers bit for bit: the codebook formats' fixtures hold every codeword of their grid);
ggml's own C functions from libggml-base (loaded with ctypes) for what numpy lacks (Q8_K
dequantization; Q4_K, Q6_K, Q8_K, Q8_1 quantization), and ggml_quantize_chunk (what llama-quantize
runs, no importance matrix) for the Q2_K, Q3_K, Q5_K, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS,
TQ1_0, TQ2_0 and MXFP4 quantization fixtures (numpy, where it has the format, must agree). Where both exist the script checks that they
agree byte for byte (numpy's quantizers may differ from ggml only in the sign of a zero scale
when a block holds -0.0; the quantization fixtures keep ggml's bytes, which llmd reproduces). Block bytes are random except for the f16/f32 scales, which are random finite
values in a sane range (no NaN/inf), so every output is finite and comparable bit for bit.
"""

import argparse
import ctypes
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

# Bytes per block, elements per block, and byte offsets of the f16 scales of each block format.
LAYOUT = {
    T.Q4_0: (18, 32, [0]),
    T.Q4_1: (20, 32, [0, 2]),
    T.Q5_0: (22, 32, [0]),
    T.Q5_1: (24, 32, [0, 2]),
    T.Q8_0: (34, 32, [0]),
    T.Q2_K: (84, 256, [80, 82]),
    T.Q3_K: (110, 256, [108]),
    T.Q4_K: (144, 256, [0, 2]),
    T.Q5_K: (176, 256, [0, 2]),
    T.Q6_K: (210, 256, [208]),
    T.Q8_K: (292, 256, []),  # f32 scale at 0, handled below
}

# The IQ, ternary and MXFP4 formats (made from their own generator, so adding them left the
# fixtures above unchanged). IQ1_M's scale is spread over four nibbles and MXFP4's is an
# exponent byte: both handled in random_blocks.
LAYOUT_IQ = {
    T.IQ2_XXS: (66, 256, [0]),
    T.IQ2_XS: (74, 256, [0]),
    T.IQ2_S: (82, 256, [0]),
    T.IQ3_XXS: (98, 256, [0]),
    T.IQ3_S: (110, 256, [0]),
    T.IQ1_S: (50, 256, [0]),
    T.IQ1_M: (56, 256, []),
    T.IQ4_NL: (18, 32, [0]),
    T.IQ4_XS: (136, 256, [0]),
    T.TQ1_0: (54, 256, [52]),
    T.TQ2_0: (66, 256, [64]),
    T.MXFP4: (17, 32, []),
}

# Codebook size and grid-index slots per block of the codebook formats: their dequantization
# fixtures hold enough blocks for every codeword to appear (see cover_grid).
GRID = {T.IQ2_XXS: (256, 32), T.IQ2_XS: (512, 32), T.IQ2_S: (1024, 32), T.IQ3_XXS: (256, 64),
        T.IQ3_S: (512, 64), T.IQ1_S: (2048, 32), T.IQ1_M: (2048, 32)}

# ggml C function name suffixes per type.
CNAME = {
    T.Q4_0: "q4_0", T.Q4_1: "q4_1", T.Q5_0: "q5_0", T.Q5_1: "q5_1", T.Q8_0: "q8_0",
    T.Q8_1: "q8_1", T.Q2_K: "q2_K", T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K",
    T.Q6_K: "q6_K", T.Q8_K: "q8_K", T.IQ2_XXS: "iq2_xxs", T.IQ2_XS: "iq2_xs", T.IQ2_S: "iq2_s",
    T.IQ3_XXS: "iq3_xxs", T.IQ3_S: "iq3_s", T.IQ1_S: "iq1_s", T.IQ1_M: "iq1_m",
    T.IQ4_NL: "iq4_nl", T.IQ4_XS: "iq4_xs", T.TQ1_0: "tq1_0", T.TQ2_0: "tq2_0", T.MXFP4: "mxfp4",
}
QBYTES = {T.Q4_0: 18, T.Q4_1: 20, T.Q5_0: 22, T.Q5_1: 24, T.Q8_0: 34, T.Q8_1: 36,
          T.Q4_K: 144, T.Q6_K: 210, T.Q8_K: 292, T.F16: 2, T.BF16: 2}
QELEMS = {T.Q4_0: 32, T.Q4_1: 32, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.Q8_1: 32,
          T.Q4_K: 256, T.Q6_K: 256, T.Q8_K: 256, T.F16: 1, T.BF16: 1}


def random_scales(rng, n):
    """Finite f16 scales spanning tiny to large magnitudes, both signs, some exact zeros."""
    mag = 10.0 ** rng.uniform(-6, 2, n)
    s = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    s[rng.random(n) < 0.05] = 0
    return s


def random_blocks(rng, qtype, n_blocks):
    nbytes, _, scale_offs = {**LAYOUT, **LAYOUT_IQ}[qtype]
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in scale_offs:
        raw[:, off:off + 2] = random_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.Q8_K:
        d = (10.0 ** rng.uniform(-8, 1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    if qtype == T.IQ1_M:
        # The f16 scale's four nibbles sit in the top 4 bits of the four u16 scale words.
        d = random_scales(rng, n_blocks).view(np.uint16)
        words = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    if qtype == T.MXFP4:
        # Exponents giving finite values: the subnormal scales (0, 1) and 2^-30 .. 2^30.
        raw[:, 0] = rng.integers(97, 158, n_blocks)
        raw[:3, 0] = [0, 1, 2]
    return raw


def cover_grid(qtype, raw):
    """Rewrites the grid indices of blocks of a codebook format so that slot s of block b holds
    codeword (b * slots + s) mod size: with enough blocks every codeword of the table appears."""
    size, slots = GRID[qtype]
    for b in range(raw.shape[0]):
        idx = [(b * slots + s) % size for s in range(slots)]
        blk = raw[b]
        if qtype == T.IQ2_XXS:  # byte l of the first u32 of each group pair
            for s, v in enumerate(idx):
                blk[2 + 8 * (s // 4) + s % 4] = v
        elif qtype == T.IQ2_XS:  # low 9 bits of each u16
            w = blk[2:66].copy().view(np.uint16)
            w[:] = (w & 0xFE00) | np.array(idx, dtype=np.uint16)
            blk[2:66] = w.view(np.uint8)
        elif qtype == T.IQ2_S:  # qs low 8 bits, qh 2 bits per index
            qh = np.zeros(8, np.uint8)
            for s, v in enumerate(idx):
                blk[2 + s] = v & 0xFF
                qh[s // 4] |= (v >> 8) << (2 * (s % 4))
            blk[66:74] = qh
        elif qtype == T.IQ3_XXS:
            blk[2:66] = idx
        elif qtype == T.IQ3_S:  # qs low 8 bits, qh one bit per index
            qh = np.zeros(8, np.uint8)
            for s, v in enumerate(idx):
                blk[2 + s] = v & 0xFF
                qh[s // 8] |= (v >> 8) << (s % 8)
            blk[66:74] = qh
        elif qtype == T.IQ1_S:  # qs low 8 bits, 3 bits per index in the low 12 of each qh word
            qh = blk[34:50].copy().view(np.uint16)
            qh &= 0xF000
            for s, v in enumerate(idx):
                blk[2 + s] = v & 0xFF
                qh[s // 4] |= (v >> 8) << (3 * (s % 4))
            blk[34:50] = qh.view(np.uint8)
        elif qtype == T.IQ1_M:  # qs low 8 bits, 3 bits per index in each qh nibble
            for s, v in enumerate(idx):
                blk[s] = v & 0xFF
                q = 32 + s // 2
                shift = 4 * (s % 2)
                blk[q] = (blk[q] & ~np.uint8(0x7 << shift)) | ((v >> 8) << shift)
    return raw


def random_input(rng, n, block):
    """Test rows: blocks drawn from several distributions (gaussian, laplace, shifted uniform,
    sparse, coarse grid values) at magnitudes from 1e-6 to 1e4, plus the awkward cases (zeros,
    a constant, exact half-steps, one outlier, tiny values, all negative, all positive)."""
    nb = n // block
    kinds = [
        lambda: rng.standard_normal(block),
        lambda: rng.laplace(size=block),
        lambda: rng.uniform(-1, 3, block),
        lambda: rng.standard_normal(block) * (rng.random(block) < 0.1),
        lambda: np.round(rng.standard_normal(block) * 4) / 8,
    ]
    x = np.stack([kinds[i % len(kinds)]() for i in range(nb)]).astype(np.float32)
    x *= (10.0 ** rng.uniform(-6, 4, (nb, 1))).astype(np.float32)
    specials = [
        np.zeros(block, np.float32),
        np.full(block, 0.75, np.float32),
        (np.arange(block, dtype=np.float32) - block / 2) * 0.5,
        np.where(np.arange(block) == 3, 100.0, 0.01).astype(np.float32),
        (rng.standard_normal(block) * 1e-12).astype(np.float32),
        -np.abs(rng.standard_normal(block)).astype(np.float32),
        np.abs(rng.standard_normal(block)).astype(np.float32) + 5,
    ]
    for i, s in enumerate(specials[: nb]):
        x[i] = s
    return x.reshape(-1)


class Ggml:
    """ctypes access to ggml's reference row functions."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)

    def _fn(self, name):
        f = getattr(self.lib, name)
        f.restype = None
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        return f

    def quantize(self, qtype, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(len(x) // QELEMS[qtype] * QBYTES[qtype], np.uint8)
        self._fn(f"quantize_row_{CNAME[qtype]}_ref")(x.ctypes.data, out.ctypes.data, len(x))
        return out

    def quantize_chunk(self, qtype, x, nbytes):
        """ggml_quantize_chunk without an importance matrix: exactly what llama.cpp's quantizer
        (llama-quantize) runs for a tensor. One row per 256 elements."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(nbytes, np.uint8)
        f = self.lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        written = f(int(qtype), x.ctypes.data, out.ctypes.data, 0, len(x) // 256, 256, None)
        assert written == nbytes, f"{qtype.name}: ggml wrote {written} bytes, expected {nbytes}"
        return out

    def dequantize(self, qtype, raw, n):
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.zeros(n, np.float32)
        self._fn(f"dequantize_row_{CNAME[qtype]}")(raw.ctypes.data, out.ctypes.data, n)
        return out


def check_numpy_matches_ggml(qtype, x, numpy_bytes, ggml_bytes):
    """numpy's quantizers equal ggml's except for the sign of a zero scale or minimum, which
    numpy (argmax / min over the block) may take from a -0.0 input where ggml's scan keeps +0.0.
    Allow exactly that: differing blocks must contain a negative zero. The fixture keeps ggml's."""
    bs, be = QBYTES[qtype], QELEMS[qtype]
    a = numpy_bytes.reshape(-1, bs)
    b = ggml_bytes.reshape(-1, bs)
    xb = x.reshape(-1, be)
    for i in np.nonzero((a != b).any(axis=1))[0]:
        assert ((xb[i] == 0) & np.signbit(xb[i])).any(), f"numpy and ggml disagree on {qtype.name} block {i}"


def write(path, magic, qtype, n, first, second):
    quantized = second if magic == b"LQQU" else first
    with open(path, "wb") as f:
        f.write(magic + struct.pack("<III", int(qtype), n, quantized.nbytes))
        f.write(first.tobytes())
        f.write(second.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ggml-lib", default=os.path.expanduser("~/.cache/llmd-llama-ref/build/bin/libggml-base.so"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "quant", "tests", "fixtures"))
    args = ap.parse_args()
    ggml = Ggml(args.ggml_lib)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20261128)

    # Dequantization: random blocks -> reference f32.
    for qtype, (nbytes, elems, _) in LAYOUT.items():
        n_blocks = 8 if elems == 256 else 32
        raw = random_blocks(rng, qtype, n_blocks)
        n = n_blocks * elems
        c = ggml.dequantize(qtype, raw, n)
        if qtype == T.Q8_K:
            ref = c  # gguf.quants has no Q8_K
        else:
            ref = quants.dequantize(raw, qtype).reshape(-1).astype(np.float32)
            assert np.array_equal(ref.view(np.uint32), c.view(np.uint32)), f"numpy and ggml disagree on {qtype.name}"
        write(os.path.join(args.out, f"dequant_{qtype.name}.bin"), b"LQDQ", qtype, n, raw, ref)

    # Plain float formats: every non-NaN f16 pattern is covered by a unit test; here random ones.
    bits = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    f16 = bits[((bits & 0x7C00) != 0x7C00) | ((bits & 0x03FF) == 0)]  # no NaNs
    write(os.path.join(args.out, "dequant_F16.bin"), b"LQDQ", T.F16, len(f16), f16,
          quants.dequantize(f16.view(np.uint8), T.F16).reshape(-1).astype(np.float32))
    bf = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    write(os.path.join(args.out, "dequant_BF16.bin"), b"LQDQ", T.BF16, len(bf), bf,
          quants.dequantize(bf.view(np.uint8), T.BF16).reshape(-1).astype(np.float32))

    # The IQ, ternary and MXFP4 formats: numpy and ggml must agree bit for bit.
    rng_iq = np.random.default_rng(20261206)
    for qtype, (nbytes, elems, _) in LAYOUT_IQ.items():
        if qtype in GRID:
            size, slots = GRID[qtype]
            n_blocks = size // slots + 2
        else:
            n_blocks = 8 if elems == 256 else 32
        raw = random_blocks(rng_iq, qtype, n_blocks)
        if qtype in GRID:
            raw = cover_grid(qtype, raw)
        n = n_blocks * elems
        c = ggml.dequantize(qtype, raw, n)
        ref = quants.dequantize(raw.reshape(-1), qtype).reshape(-1).astype(np.float32)
        assert np.isfinite(ref).all(), f"{qtype.name}: fixture values must be finite"
        assert np.array_equal(ref.view(np.uint32), c.view(np.uint32)), f"numpy and ggml disagree on {qtype.name}"
        write(os.path.join(args.out, f"dequant_{qtype.name}.bin"), b"LQDQ", qtype, n, raw, ref)

    # Quantization: random rows -> reference bytes.
    for qtype in [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.BF16, T.F16, T.Q8_1, T.Q4_K, T.Q6_K, T.Q8_K]:
        block = 256 if QELEMS[qtype] == 256 else 32
        # The K-quant fits (Q4_K, Q6_K) have the most data-dependent branches: more blocks.
        n_blocks = {T.Q4_K: 96, T.Q6_K: 96}.get(qtype, 16 if block == 256 else 128)
        x = random_input(rng, n_blocks * block, block)
        ref = None
        if qtype not in (T.Q8_1, T.Q4_K, T.Q6_K, T.Q8_K):
            ref = quants.quantize(x, qtype).reshape(-1).view(np.uint8)
        if qtype not in (T.F16, T.BF16):
            # For an all-zero Q8_K block ggml leaves bsums unwritten; the output buffer starts
            # zeroed, which is what llmd writes.
            c = ggml.quantize(qtype, x)
            if ref is not None:
                check_numpy_matches_ggml(qtype, x, ref, c)
            ref = c
        write(os.path.join(args.out, f"quant_{qtype.name}.bin"), b"LQQU", qtype, len(x), x, ref)
    # The quantizers added with the IQ formats (their own generator, so the files above are
    # unchanged): ggml_quantize_chunk, which is what llama-quantize runs; numpy where it has the
    # format must agree.
    rng_q = np.random.default_rng(20261207)
    for qtype, (nbytes, elems) in {T.Q2_K: (84, 256), T.Q3_K: (110, 256), T.Q5_K: (176, 256),
                                   T.IQ4_NL: (18, 32), T.IQ4_XS: (136, 256), T.TQ1_0: (54, 256),
                                   T.TQ2_0: (66, 256), T.MXFP4: (17, 32)}.items():
        # The searching quantizers (K-quants, IQ4) have the most data-dependent branches: more
        # blocks, in rows of 256 either way.
        n = 96 * 256 if qtype in (T.Q2_K, T.Q3_K, T.Q5_K, T.IQ4_NL, T.IQ4_XS) else 16 * 256
        x = random_input(rng_q, n, elems)
        ref = ggml.quantize_chunk(qtype, x, n // elems * nbytes)
        if qtype in (T.TQ1_0, T.TQ2_0, T.MXFP4):
            QBYTES[qtype], QELEMS[qtype] = nbytes, elems
            check_numpy_matches_ggml(qtype, x, quants.quantize(x, qtype).reshape(-1).view(np.uint8), ref)
        write(os.path.join(args.out, f"quant_{qtype.name}.bin"), b"LQQU", qtype, len(x), x, ref)
    # The codebook quantizers (added later still, own generator): rows with all-zero groups in
    # nonzero super-blocks too, which ggml's IQ3_S handles by shifting the later groups' codes.
    rng_g = np.random.default_rng(20261208)
    for qtype, nbytes in {T.IQ2_S: 82, T.IQ3_XXS: 98, T.IQ3_S: 110}.items():
        n = 96 * 256
        x = random_input(rng_g, n, 256)
        for b in range(10, 20):
            g = 16 * (b % 16)
            x[256 * b + g:256 * b + g + 32] = 0
        ref = ggml.quantize_chunk(qtype, x, n // 256 * nbytes)
        write(os.path.join(args.out, f"quant_{qtype.name}.bin"), b"LQQU", qtype, len(x), x, ref)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote fixtures to {args.out}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
