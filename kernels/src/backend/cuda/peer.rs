//! Peer access between GPUs: which pairs copy directly (peer to peer over PCIe or NVLink) and
//! which through host memory, and turning direct access on where the hardware allows it.
//!
//! Two things must be opened for a copy to go peer to peer: each context's access to the other
//! (`cuCtxEnablePeerAccess`) and, because device buffers come from the driver's stream-ordered
//! pool (`cuMemAllocAsync`), each GPU's pool to the other device (`cuMemPoolSetAccess`).
//! Without them `cuMemcpyPeerAsync` still works, but the driver stages it through host memory.
//! Every time a backend opens a GPU, access is enabled between it and every other GPU with an
//! open context, where `cuDeviceCanAccessPeer` says the hardware allows it; the outcome per pair
//! is kept for `status` and `doctor` ([`cuda_peer_paths`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{CudaContext, DriverError};

/// How activations, weights and caches cross between two GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPath {
    /// Peer to peer: both contexts and both memory pools opened to each other.
    Direct,
    /// Through host memory, with the reason (the hardware or driver does not allow peer access,
    /// or enabling it failed).
    ThroughHost(String),
}

/// The contexts opened so far by ordinal, and the outcome for each pair `(a, b)`, `a < b`.
#[derive(Default)]
struct Peers {
    /// Each GPU's primary context while a backend holds it.
    contexts: BTreeMap<usize, Weak<CudaContext>>,
    /// What enabling access between two GPUs gave.
    paths: BTreeMap<(usize, usize), PeerPath>,
}

fn peers() -> &'static Mutex<Peers> {
    static PEERS: OnceLock<Mutex<Peers>> = OnceLock::new();
    PEERS.get_or_init(Mutex::default)
}

/// How each pair of GPUs opened in this process copies: `(a, b, path)` with `a < b`.
pub fn cuda_peer_paths() -> Vec<(usize, usize, PeerPath)> {
    let peers = peers().lock().unwrap_or_else(PoisonError::into_inner);
    peers
        .paths
        .iter()
        .map(|(&(a, b), path)| (a, b, path.clone()))
        .collect()
}

/// Enables peer access between `ctx` (just opened) and every other GPU whose context is open,
/// both ways, where the hardware allows it; records each pair's path.
pub(super) fn connect(ctx: &Arc<CudaContext>) {
    let mut peers = peers().lock().unwrap_or_else(PoisonError::into_inner);
    let me = ctx.ordinal();
    peers.contexts.insert(me, Arc::downgrade(ctx));
    let others: Vec<Arc<CudaContext>> = peers
        .contexts
        .iter()
        .filter(|(&ordinal, _)| ordinal != me)
        .filter_map(|(_, weak)| weak.upgrade())
        .collect();
    for other in others {
        let path = match open_both_ways(ctx, &other) {
            Ok(()) => PeerPath::Direct,
            Err(reason) => PeerPath::ThroughHost(reason),
        };
        let key = (me.min(other.ordinal()), me.max(other.ordinal()));
        peers.paths.insert(key, path);
    }
    // The caller goes on in its own context.
    let _ = ctx.bind_to_thread();
}

/// Opens `a` and `b` to each other: contexts and memory pools, each way.
fn open_both_ways(a: &Arc<CudaContext>, b: &Arc<CudaContext>) -> Result<(), String> {
    let (da, db) = (a.cu_device(), b.cu_device());
    for (from, to, dev_from, dev_to) in [(a, b, da, db), (b, a, db, da)] {
        let mut can = 0;
        // SAFETY: an out-pointer to a local int and two device handles from live contexts.
        unsafe { sys::cuDeviceCanAccessPeer(&mut can, dev_from, dev_to) }
            .result()
            .map_err(|e| {
                format!(
                    "asking whether GPU {} can reach GPU {}: {e}",
                    from.ordinal(),
                    to.ordinal()
                )
            })?;
        if can == 0 {
            return Err(format!(
                "the driver reports no peer access from GPU {} to GPU {}",
                from.ordinal(),
                to.ordinal()
            ));
        }
        from.bind_to_thread()
            .map_err(|e| format!("binding GPU {}: {e}", from.ordinal()))?;
        // SAFETY: `from`'s context is current and `to`'s context is live (held by `to`).
        match unsafe { sys::cuCtxEnablePeerAccess(to.cu_ctx(), 0) }.result() {
            Ok(()) | Err(DriverError(CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)) => {}
            Err(e) => {
                return Err(format!(
                    "enabling peer access from GPU {} to GPU {}: {e}",
                    from.ordinal(),
                    to.ordinal()
                ))
            }
        }
        open_pool(to, from.ordinal()).map_err(|e| {
            format!(
                "opening GPU {}'s memory pool to GPU {}: {e}",
                to.ordinal(),
                from.ordinal()
            )
        })?;
    }
    Ok(())
}

/// Grants device `reader` read and write access to the default (stream-ordered) memory pool of
/// `owner`, which the backend's buffers come from.
fn open_pool(owner: &Arc<CudaContext>, reader: usize) -> Result<(), DriverError> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: an out-pointer to a local handle and a device handle from a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, owner.cu_device()) }.result()?;
    let desc = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: reader as i32,
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: `pool` was just returned by the driver; one descriptor, passed by pointer.
    unsafe { sys::cuMemPoolSetAccess(pool, &desc, 1) }.result()
}
