//! The weight types the CUDA kernels compute with (the lists of `kernels/cuda/types.cuh`): each
//! type's kernel-name suffix and how its matrix-vector product runs, and from them the names of
//! the per-type kernels each PTX module defines.

use crate::quant::GgmlType;

/// How a weight type's matrix-vector product (decode) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MatVec {
    /// `mul_mat_vec_<suffix>` (mmv.cu) on f32 activations, the weights read as they lie in
    /// pairs (rows of an even number of values).
    Float,
    /// `quantize_q8_1` of the activations, then `mul_mat_vec_<suffix>_q8_1` (mmvq.cu).
    Q8_1,
}

/// One weight type of the CUDA kernels.
#[derive(Debug)]
pub(super) struct CudaType {
    /// The GGML type.
    pub ty: GgmlType,
    /// Its name in kernel names: `get_rows_<suffix>`, `dequantize_<suffix>_f16`, ...
    pub suffix: &'static str,
    /// Its matrix-vector kernel.
    pub matvec: MatVec,
}

/// Every type with kernels: `get_rows_<suffix>` for all; `mul_mat_vec_<suffix>` or
/// `mul_mat_vec_<suffix>_q8_1` by [`MatVec`]; `mul_mat_q_<suffix>` (the int8 tensor-core
/// products of prefill) for the block-quantized types, `dequantize_<suffix>_f32` for F16 and
/// BF16 rows that the tensor-core GEMMs cannot take (`dequantize.cu` has a `_f32` and an `_f16`
/// kernel for every type; the host check verifies them, the backend loads only these two).
/// Q8_1 and Q8_K are activation formats and the
/// integer types hold no weights; the newest GGML formats (NVFP4, Q1_0, Q2_0) have no kernels on
/// either backend yet: weights of those types are refused at upload, naming type and tensor.
pub(super) const CUDA_TYPES: &[CudaType] = &[
    float(GgmlType::F32, "f32"),
    float(GgmlType::F16, "f16"),
    float(GgmlType::BF16, "bf16"),
    quant(GgmlType::Q4_0, "q4_0"),
    quant(GgmlType::Q4_1, "q4_1"),
    quant(GgmlType::Q5_0, "q5_0"),
    quant(GgmlType::Q5_1, "q5_1"),
    quant(GgmlType::Q8_0, "q8_0"),
    quant(GgmlType::Q2_K, "q2_K"),
    quant(GgmlType::Q3_K, "q3_K"),
    quant(GgmlType::Q4_K, "q4_K"),
    quant(GgmlType::Q5_K, "q5_K"),
    quant(GgmlType::Q6_K, "q6_K"),
    quant(GgmlType::IQ2_XXS, "iq2_xxs"),
    quant(GgmlType::IQ2_XS, "iq2_xs"),
    quant(GgmlType::IQ2_S, "iq2_s"),
    quant(GgmlType::IQ3_XXS, "iq3_xxs"),
    quant(GgmlType::IQ3_S, "iq3_s"),
    quant(GgmlType::IQ1_S, "iq1_s"),
    quant(GgmlType::IQ1_M, "iq1_m"),
    quant(GgmlType::IQ4_NL, "iq4_nl"),
    quant(GgmlType::IQ4_XS, "iq4_xs"),
    quant(GgmlType::TQ1_0, "tq1_0"),
    quant(GgmlType::TQ2_0, "tq2_0"),
    quant(GgmlType::MXFP4, "mxfp4"),
];

const fn float(ty: GgmlType, suffix: &'static str) -> CudaType {
    CudaType {
        ty,
        suffix,
        matvec: MatVec::Float,
    }
}

const fn quant(ty: GgmlType, suffix: &'static str) -> CudaType {
    CudaType {
        ty,
        suffix,
        matvec: MatVec::Q8_1,
    }
}

/// The kernels' entry for `ty`, or `None` when no kernel handles it.
pub(super) fn cuda_type(ty: GgmlType) -> Option<&'static CudaType> {
    CUDA_TYPES.iter().find(|t| t.ty == ty)
}

/// The name of `t`'s matrix-vector kernel.
pub(super) fn matvec_kernel(t: &CudaType) -> String {
    match t.matvec {
        MatVec::Float => format!("mul_mat_vec_{}", t.suffix),
        MatVec::Q8_1 => format!("mul_mat_vec_{}_q8_1", t.suffix),
    }
}

/// The name of `t`'s routed matrix-vector kernel (mixtures of experts: `mul_mat_vec_id_<suffix>_q8_1`,
/// block-quantized types only).
pub(super) fn routed_matvec_kernel(t: &CudaType) -> String {
    format!("mul_mat_vec_id_{}_q8_1", t.suffix)
}

/// The name of `t`'s routed matrix-vector kernel that sums each token's products into the
/// residual stream (a mixture of experts' down and weighted sum:
/// `mul_mat_vec_id_combine_<suffix>_q8_1`, `mmvq.cu`).
pub(super) fn routed_combine_kernel(t: &CudaType) -> String {
    format!("mul_mat_vec_id_combine_{}_q8_1", t.suffix)
}

/// The per-type kernels the module built from `kernels/cuda/<stem>.cu` defines (empty for the
/// modules without per-type kernels).
pub(super) fn type_kernels(stem: &str) -> Vec<String> {
    let mut names = Vec::new();
    for t in CUDA_TYPES {
        match stem {
            "getrows" => names.push(format!("get_rows_{}", t.suffix)),
            "dequantize" if t.matvec == MatVec::Float && t.ty != GgmlType::F32 => {
                names.push(format!("dequantize_{}_f32", t.suffix));
            }
            "mmv" if t.matvec == MatVec::Float => names.push(matvec_kernel(t)),
            "mmvq" if t.matvec == MatVec::Q8_1 => {
                names.push(matvec_kernel(t));
                names.push(routed_matvec_kernel(t));
                names.push(routed_combine_kernel(t));
            }
            "mmq" if t.matvec == MatVec::Q8_1 => names.push(format!("mul_mat_q_{}", t.suffix)),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type the CPU backend computes has kernels, but Q8_K (an activation format that no
    /// GGUF file holds weights in; llama.cpp has no CUDA kernels for it either).
    #[test]
    fn every_type_the_cpu_computes_has_kernels() {
        for ty in GgmlType::ALL {
            let expected = ty.is_supported() && ty != GgmlType::Q8_K;
            assert_eq!(cuda_type(ty).is_some(), expected, "{ty}");
        }
        for t in CUDA_TYPES {
            assert_eq!(
                t.suffix.to_ascii_uppercase(),
                t.ty.name().to_ascii_uppercase(),
                "suffix of {}",
                t.ty
            );
        }
    }

    #[test]
    fn kernel_names_follow_the_cuda_lists() {
        assert_eq!(
            type_kernels("dequantize"),
            ["dequantize_f16_f32", "dequantize_bf16_f32"]
        );
        assert_eq!(type_kernels("getrows").len(), CUDA_TYPES.len());
        assert_eq!(
            type_kernels("mmv"),
            ["mul_mat_vec_f32", "mul_mat_vec_f16", "mul_mat_vec_bf16"]
        );
        assert!(type_kernels("mmvq").contains(&"mul_mat_vec_q2_K_q8_1".to_string()));
        assert!(type_kernels("mmvq").contains(&"mul_mat_vec_id_q2_K_q8_1".to_string()));
        assert!(type_kernels("mmvq").contains(&"mul_mat_vec_id_combine_q2_K_q8_1".to_string()));
        assert_eq!(type_kernels("mmvq").len(), 3 * (CUDA_TYPES.len() - 3));
        assert_eq!(type_kernels("mmq").len(), CUDA_TYPES.len() - 3);
        assert!(type_kernels("mmq").contains(&"mul_mat_q_iq1_m".to_string()));
        assert!(type_kernels("rope").is_empty());
    }
}
