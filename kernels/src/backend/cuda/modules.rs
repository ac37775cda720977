//! The compiled kernels the backend embeds and what a GPU and its driver must offer to run them.
//!
//! Each kernel file (`kernels/cuda/*.cu`) is embedded twice, both generated and kept fresh by
//! `scripts/check-cuda-kernels`: as CUBINs for sm_80, sm_86, sm_89 and sm_90 (machine code, no
//! JIT; zlib-compressed in `kernels/cuda/cubin/`) and as compute_80 PTX (`kernels/cuda/ptx/`),
//! which the driver JIT-compiles for any newer GPU (Blackwell and later). A GPU loads the CUBIN
//! of its architecture family (same major version, the highest minor not above its own), and the
//! PTX when there is none or it does not load.
//!
//! The PTX is ISA 8.4 (CUDA 12.4), which only drivers of release 550 or newer JIT-compile: an
//! older driver is refused up front with that requirement ([`check_driver`]). GPUs older than
//! compute capability 8.0 (Pascal P40, Volta V100, Turing) are refused by name
//! ([`check_compute_capability`]): the kernels use sm_80 features (bf16 loads, WMMA tensor cores
//! with f32 accumulation on every path) and no build for those architectures is shipped.

use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaContext, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;

/// The oldest driver the embedded PTX loads on: `cuDriverGetVersion` 12040 (CUDA 12.4), the
/// driver release 550 branch.
pub const MIN_DRIVER_CUDA_VERSION: i32 = 12040;
/// The release of the oldest driver that runs the kernels.
pub const MIN_DRIVER_RELEASE: u32 = 550;
/// The oldest compute capability the kernels are built for (Ampere), as `major * 10 + minor`.
pub const MIN_COMPUTE_CAPABILITY: i32 = 80;

/// The GPU architectures with embedded CUBINs, as `major * 10 + minor`.
const CUBIN_ARCHS: [i32; 4] = [80, 86, 89, 90];

/// One kernel file: its name, its PTX, and its CUBINs by [`CUBIN_ARCHS`] (zlib-compressed).
pub(super) struct KernelFile {
    /// The file stem (`mmvq`).
    pub name: &'static str,
    /// compute_80 PTX text.
    pub ptx: &'static str,
    /// The CUBINs for sm_80, sm_86, sm_89, sm_90, zlib-compressed.
    pub cubins: [&'static [u8]; 4],
}

macro_rules! kernel_file {
    ($name:literal) => {
        KernelFile {
            name: $name,
            ptx: include_str!(concat!("../../../cuda/ptx/", $name, ".ptx")),
            cubins: [
                include_bytes!(concat!("../../../cuda/cubin/", $name, ".sm_80.cubin.zz")),
                include_bytes!(concat!("../../../cuda/cubin/", $name, ".sm_86.cubin.zz")),
                include_bytes!(concat!("../../../cuda/cubin/", $name, ".sm_89.cubin.zz")),
                include_bytes!(concat!("../../../cuda/cubin/", $name, ".sm_90.cubin.zz")),
            ],
        }
    };
}

/// Every kernel file.
pub(super) const FILES: &[KernelFile] = &[
    kernel_file!("attention"),
    kernel_file!("dequantize"),
    kernel_file!("elementwise"),
    kernel_file!("gemm"),
    kernel_file!("getrows"),
    kernel_file!("kvcache"),
    kernel_file!("mmq"),
    kernel_file!("mmv"),
    kernel_file!("mmvq"),
    kernel_file!("moe"),
    kernel_file!("norm"),
    kernel_file!("quantize"),
    kernel_file!("rope"),
    kernel_file!("select"),
];

/// The driver release branch that first reports CUDA version `v` (`cuDriverGetVersion`).
fn release_of(v: i32) -> Option<u32> {
    Some(match v {
        ..=11079 => return None,
        11080..=11999 => 520,
        12000..=12009 => 525,
        12010..=12019 => 530,
        12020..=12029 => 535,
        12030..=12039 => 545,
        12040..=12049 => 550,
        12050..=12059 => 555,
        12060..=12079 => 560,
        12080..=12089 => 570,
        12090..=12999 => 575,
        _ => 580,
    })
}

/// "CUDA 12.2 (release 535)".
fn describe_driver(v: i32) -> String {
    let cuda = format!("CUDA {}.{}", v / 1000, v % 1000 / 10);
    match release_of(v) {
        Some(release) => format!("a driver for {cuda} (release {release})"),
        None => format!("a driver for {cuda}"),
    }
}

/// `Ok` when the driver runs the embedded kernels, else the requirement and what was found:
/// "NVIDIA driver 550 or newer is required, found a driver for CUDA 12.2 (release 535)".
pub fn check_driver(version: i32) -> Result<(), String> {
    if version >= MIN_DRIVER_CUDA_VERSION {
        return Ok(());
    }
    Err(format!(
        "NVIDIA driver {MIN_DRIVER_RELEASE} or newer is required, found {}",
        describe_driver(version)
    ))
}

/// `Ok` when the kernels run on a GPU of compute capability `major.minor`, else why not.
pub fn check_compute_capability(name: &str, (major, minor): (i32, i32)) -> Result<(), String> {
    if major * 10 + minor >= MIN_COMPUTE_CAPABILITY {
        return Ok(());
    }
    Err(format!(
        "{name} has compute capability {major}.{minor}; llmd's kernels need 8.0 or newer \
         (Ampere or later: RTX 30xx/40xx/50xx, A100, L4, L40, H100); Pascal (P40), Volta (V100) \
         and Turing cards are not supported"
    ))
}

/// The CUBIN (compressed) for a GPU of compute capability `cc` (`major * 10 + minor`): the
/// shipped architecture of the same major with the highest minor not above the GPU's (a CUBIN
/// runs on later minors of its major), or `None` (the PTX serves).
pub(super) fn cubin_for(file: &KernelFile, cc: i32) -> Option<&'static [u8]> {
    CUBIN_ARCHS
        .iter()
        .zip(file.cubins)
        .filter(|(&arch, _)| arch / 10 == cc / 10 && arch <= cc)
        .max_by_key(|(&arch, _)| arch)
        .map(|(_, image)| image)
}

/// How a module was loaded (for tests and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleImage {
    /// Machine code for the GPU's architecture.
    Cubin,
    /// PTX, JIT-compiled by the driver.
    Ptx,
}

/// Loads `file` into `ctx` for a GPU of compute capability `cc`: its CUBIN where one fits and
/// loads, else its PTX. A PTX the driver is too old for is reported with the driver requirement.
pub(super) fn load(
    ctx: &Arc<CudaContext>,
    file: &KernelFile,
    cc: i32,
) -> Result<(Arc<CudaModule>, ModuleImage), String> {
    if let Some(compressed) = cubin_for(file, cc) {
        let image = miniz_oxide::inflate::decompress_to_vec_zlib(compressed)
            .map_err(|e| format!("kernels/cuda/cubin/{}: corrupt ({e:?})", file.name))?;
        // A CUBIN that does not load (an unexpected architecture variant) leaves the PTX to try.
        if let Ok(module) = ctx.load_module(Ptx::from_binary(image)) {
            return Ok((module, ModuleImage::Cubin));
        }
    }
    match ctx.load_module(Ptx::from_src(file.ptx)) {
        Ok(module) => Ok((module, ModuleImage::Ptx)),
        Err(DriverError(CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION)) => Err(format!(
            "loading kernels/cuda/ptx/{}.ptx: the driver cannot compile PTX ISA 8.4; NVIDIA \
             driver {MIN_DRIVER_RELEASE} or newer is required",
            file.name
        )),
        Err(e) => Err(format!("loading kernels/cuda/ptx/{}.ptx: {e}", file.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_before_550_are_refused_naming_what_was_found() {
        assert_eq!(check_driver(12040), Ok(()));
        assert_eq!(check_driver(13000), Ok(()));
        let err = check_driver(12020).expect_err("535 is too old");
        assert_eq!(
            err,
            "NVIDIA driver 550 or newer is required, found a driver for CUDA 12.2 (release 535)"
        );
        assert!(check_driver(11040)
            .expect_err("too old")
            .contains("CUDA 11.4"));
    }

    #[test]
    fn gpus_before_ampere_are_refused_by_name() {
        assert!(check_compute_capability("A100", (8, 0)).is_ok());
        assert!(check_compute_capability("RTX 5090", (12, 0)).is_ok());
        for (cc, card) in [
            ((6, 1), "Tesla P40"),
            ((7, 0), "Tesla V100"),
            ((7, 5), "T4"),
        ] {
            let err = check_compute_capability(card, cc).expect_err("refused");
            assert!(err.contains(card) && err.contains("8.0 or newer"), "{err}");
        }
    }

    #[test]
    fn each_gpu_gets_the_cubin_of_its_family_or_the_ptx() {
        let file = &FILES[0];
        let pick = |cc| cubin_for(file, cc).map(|c| file.cubins.iter().position(|x| *x == c));
        assert_eq!(pick(80), Some(Some(0)));
        assert_eq!(pick(86), Some(Some(1)));
        assert_eq!(pick(87), Some(Some(1)), "Orin runs the sm_86 CUBIN");
        assert_eq!(pick(89), Some(Some(2)));
        assert_eq!(pick(90), Some(Some(3)));
        assert_eq!(pick(100), None, "Blackwell JIT-compiles the PTX");
        assert_eq!(pick(120), None);
        for f in FILES {
            for c in f.cubins {
                let image = miniz_oxide::inflate::decompress_to_vec_zlib(c).expect("inflates");
                assert_eq!(&image[..4], b"\x7fELF", "{}", f.name);
            }
        }
    }
}
