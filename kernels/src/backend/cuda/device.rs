//! Whether CUDA can be used here ([`cuda_available`]) and what the driver says of each GPU
//! ([`cuda_device_info`]): name, memory, UUID and PCI bus id, with the driver and compute
//! capability checked. Never panics: cudarc's panics are caught and reported as the reason.

use std::panic::catch_unwind;

use cudarc::driver::{CudaContext, DriverError};

use super::context::GpuState;
use super::modules::{check_compute_capability, check_driver};

/// Whether CUDA can be used: `Ok(number of devices)`, or why not.
///
/// Checks that libcuda can be loaded before calling into it (cudarc panics otherwise), then
/// initialises the driver and counts devices. Never panics: a panic inside cudarc (for example a
/// driver too old to have a symbol) is caught and reported as the reason.
pub fn cuda_available() -> Result<usize, String> {
    // SAFETY: `is_culib_present` only tries to dlopen libcuda under its usual names and closes
    // it again; it calls no CUDA function.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(
            "libcuda (the NVIDIA driver library) was not found: no NVIDIA driver is \
                    installed or it is not on the library path"
                .to_string(),
        );
    }
    let counted = catch_unwind(|| -> Result<(i32, i32), DriverError> {
        cudarc::driver::result::init()?;
        let mut version = 0;
        // SAFETY: an out-pointer to a local int, after cuInit.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
        Ok((version, CudaContext::device_count()?))
    });
    match counted {
        Ok(Ok((version, n))) => {
            check_driver(version)?;
            if n > 0 {
                Ok(n as usize)
            } else {
                Err("the NVIDIA driver reports no CUDA devices".to_string())
            }
        }
        Ok(Err(e)) => Err(format!("the CUDA driver failed to initialise: {e}")),
        Err(_) => Err("loading the CUDA driver library failed (driver too old?)".to_string()),
    }
}

/// What the driver says of one GPU: its name, memory and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    /// The product name ("NVIDIA H200").
    pub name: String,
    /// Bytes of device memory.
    pub total_bytes: u64,
    /// Bytes free now (other processes and contexts included).
    pub free_bytes: u64,
    /// Its UUID as NVML writes it ("GPU-5f3e...-..."): how the daemon finds this GPU's NVML
    /// index (CUDA numbers GPUs fastest first, NVML by PCI bus).
    pub uuid: Option<String>,
    /// Its PCI bus id ("00000000:01:00.0"), the second way to match NVML.
    pub pci_bus_id: Option<String>,
}

/// A CUDA UUID in NVML's text form: "GPU-" and 32 hex digits grouped 8-4-4-4-12.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The PCI bus id of device `dev` as NVML writes it (8-digit domain, upper-case hex).
fn pci_bus_id(dev: cudarc::driver::sys::CUdevice) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer holds 32 bytes and its length is passed; `dev` comes from a context.
    unsafe { cudarc::driver::sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), 32, dev) }
        .result()
        .ok()?;
    // SAFETY: the driver wrote a NUL-terminated string into the buffer.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    normalize_pci_bus_id(&text)
}

/// "0000:01:00.0" or "00000000:01:00.0" (any case) as "00000000:01:00.0": CUDA writes a 4-digit
/// domain, NVML an 8-digit one.
pub fn normalize_pci_bus_id(text: &str) -> Option<String> {
    let (domain, rest) = text.trim().split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some(format!(
        "{:08X}:{:02X}:{:02X}.{:X}",
        hex(domain)?,
        hex(bus)?,
        hex(device)?,
        hex(function)?
    ))
}

/// Asks the driver about GPU `ordinal` (after [`cuda_available`] says CUDA works): its name,
/// total and free memory. Creating the context to ask costs a few hundred MiB of device memory
/// while it lives, which the free figure includes, as it will be in use once models load.
pub fn cuda_device_info(ordinal: usize) -> Result<CudaDeviceInfo, String> {
    let count = cuda_available()?;
    if ordinal >= count {
        return Err(format!(
            "no CUDA device {ordinal}: the driver reports {count}"
        ));
    }
    if let Some(fault) = GpuState::of(ordinal).fault() {
        return Err(format!(
            "GPU {ordinal} failed ({fault}); it cannot be used until llmd restarts"
        ));
    }
    let asked = catch_unwind(|| -> Result<(CudaDeviceInfo, (i32, i32)), DriverError> {
        let ctx = CudaContext::new(ordinal)?;
        let name = ctx.name()?;
        let (free, total) = ctx.mem_get_info()?;
        let uuid = ctx
            .uuid()
            .ok()
            .map(|u| uuid_text(&u.bytes.map(|b| b as u8)));
        let info = CudaDeviceInfo {
            name,
            total_bytes: total as u64,
            free_bytes: free as u64,
            uuid,
            pci_bus_id: pci_bus_id(ctx.cu_device()),
        };
        Ok((info, ctx.compute_capability()?))
    });
    match asked {
        Ok(Ok((info, cc))) => {
            check_compute_capability(&format!("CUDA device {ordinal} ({})", info.name), cc)?;
            Ok(info)
        }
        Ok(Err(e)) => Err(format!("CUDA device {ordinal}: {e}")),
        Err(_) => Err(format!("CUDA device {ordinal}: the driver call panicked")),
    }
}
