// The weight types the kernels compute with: GGML's type ids, and the lists that instantiate
// each type's kernels (dequantize.cu, getrows.cu, mmvq.cu, mmq.cu) and register them by name (the host
// emulation and the fake driver). The CUDA backend's table of the same types is
// kernels/src/backend/cuda/types.rs.
#pragma once

#define LLMD_TYPE_F32 0
#define LLMD_TYPE_F16 1
#define LLMD_TYPE_Q4_0 2
#define LLMD_TYPE_Q4_1 3
#define LLMD_TYPE_Q5_0 6
#define LLMD_TYPE_Q5_1 7
#define LLMD_TYPE_Q8_0 8
#define LLMD_TYPE_Q2_K 10
#define LLMD_TYPE_Q3_K 11
#define LLMD_TYPE_Q4_K 12
#define LLMD_TYPE_Q5_K 13
#define LLMD_TYPE_Q6_K 14
#define LLMD_TYPE_IQ2_XXS 16
#define LLMD_TYPE_IQ2_XS 17
#define LLMD_TYPE_IQ3_XXS 18
#define LLMD_TYPE_IQ1_S 19
#define LLMD_TYPE_IQ4_NL 20
#define LLMD_TYPE_IQ3_S 21
#define LLMD_TYPE_IQ2_S 22
#define LLMD_TYPE_IQ4_XS 23
#define LLMD_TYPE_IQ1_M 29
#define LLMD_TYPE_BF16 30
#define LLMD_TYPE_TQ1_0 34
#define LLMD_TYPE_TQ2_0 35
#define LLMD_TYPE_MXFP4 39

// X(name, TYPE) for every block-quantized type: each has dequantize_<name>_f32,
// get_rows_<name>, mul_mat_vec_<name>_q8_1 and mul_mat_q_<name>.
#define LLMD_QUANT_TYPES(X)                                                                        \
    X(q4_0, LLMD_TYPE_Q4_0)                                                                        \
    X(q4_1, LLMD_TYPE_Q4_1)                                                                        \
    X(q5_0, LLMD_TYPE_Q5_0)                                                                        \
    X(q5_1, LLMD_TYPE_Q5_1)                                                                        \
    X(q8_0, LLMD_TYPE_Q8_0)                                                                        \
    X(q2_K, LLMD_TYPE_Q2_K)                                                                        \
    X(q3_K, LLMD_TYPE_Q3_K)                                                                        \
    X(q4_K, LLMD_TYPE_Q4_K)                                                                        \
    X(q5_K, LLMD_TYPE_Q5_K)                                                                        \
    X(q6_K, LLMD_TYPE_Q6_K)                                                                        \
    X(iq2_xxs, LLMD_TYPE_IQ2_XXS)                                                                  \
    X(iq2_xs, LLMD_TYPE_IQ2_XS)                                                                    \
    X(iq2_s, LLMD_TYPE_IQ2_S)                                                                      \
    X(iq3_xxs, LLMD_TYPE_IQ3_XXS)                                                                  \
    X(iq3_s, LLMD_TYPE_IQ3_S)                                                                      \
    X(iq1_s, LLMD_TYPE_IQ1_S)                                                                      \
    X(iq1_m, LLMD_TYPE_IQ1_M)                                                                      \
    X(iq4_nl, LLMD_TYPE_IQ4_NL)                                                                    \
    X(iq4_xs, LLMD_TYPE_IQ4_XS)                                                                    \
    X(tq1_0, LLMD_TYPE_TQ1_0)                                                                      \
    X(tq2_0, LLMD_TYPE_TQ2_0)                                                                      \
    X(mxfp4, LLMD_TYPE_MXFP4)

// X(name, TYPE) for the element types other than F32 (which the GEMM multiplies as it lies):
// dequantize_<name>_f32 and get_rows_<name>; their matrix-vector products are mmv.cu's, their
// prefill products gemm.cu's tensor-core GEMMs.
#define LLMD_HALF_TYPES(X)                                                                         \
    X(f16, LLMD_TYPE_F16)                                                                          \
    X(bf16, LLMD_TYPE_BF16)
