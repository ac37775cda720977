//! The token positions a step's ops read on the device ([`StagedPositions`]): the host writes
//! them into page-locked memory and one asynchronous copy on the backend's stream moves them to
//! the device buffer the kernels read. Neither path goes through the driver's staged pageable
//! copy:
//! - eagerly, the first op of a step that reads positions queues the copy, from the next slot of
//!   a small ring of page-locked buffers ([`RING`]);
//! - a captured step's graph holds the copy as its first node, from page-locked memory of its
//!   own ([`GraphPositions`], allocated before the capture, since a capture refuses
//!   allocations), so that a replay is the whole step: the host writes the staged positions
//!   into the graph's buffer, then launches it.
//!
//! The host never rewrites page-locked memory a queued copy may still read: each buffer (a ring
//! slot, a graph's) has an event recorded after the work that reads it (the copy, or the graph
//! launch), which the host waits for before writing it again. The waits cost nothing in a decode
//! loop, whose logits read-back has already waited for the step. A ring for the eager copies and
//! a buffer per graph, not one buffer: a stage runs several micro-batches of one step back to
//! back (`pipeline::micro_batches`), each with its positions; with one buffer the host would wait
//! for each micro-batch's copy (for a graph, its whole launch) before queueing the next. A graph
//! cannot copy from a ring, whose slot changes with each step, as its copy node freezes the
//! source address.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream};

use super::{grown, BackendError, CudaBackend, DeviceBuf};

/// Positions the device buffer and the ring's slots hold at least: a whole prefill chunk, so
/// that decode steps never reallocate them (a reallocation of the device buffer changes the
/// graph epoch, and every graph is captured anew).
const MIN_POSITIONS: usize = 512;
/// Page-locked slots the eager copies rotate through: a slot is written again only after this
/// many later copies, more than the micro-batches one stage queues in a step (one per stage of
/// the pipeline), so the host waits for none of them.
const RING: usize = 8;

/// Page-locked host memory holding positions, and the event recorded after the last work queued
/// that reads it. Allocated through the driver directly rather than as cudarc's pinned slice,
/// whose every access and drop synchronises an event of its own (a host synchronisation each).
struct PinnedPositions {
    /// The allocation's first value (`cuMemHostAlloc`, freed on drop).
    ptr: *mut u32,
    /// Its capacity in positions.
    len: usize,
    /// Recorded on the stream after the last copy (or graph launch) reading the memory; never
    /// recorded yet counts as reached.
    read: CudaEvent,
    /// The stream `read` is recorded on, kept alive until the wait for `read` on drop (the
    /// backend's own stream may be destroyed first).
    stream: Arc<CudaStream>,
}

// SAFETY: the memory is owned by this value (page-locked host memory, valid from any thread
// until freed on drop) and only reached through its owner: the backend's `Reused` (under its lock), or one
// step graph (used by one thread at a time).
unsafe impl Send for PinnedPositions {}

impl PinnedPositions {
    /// Its capacity in positions.
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for PinnedPositions {
    fn drop(&mut self) {
        // A queued copy may still read the memory: it is freed only after that copy ran (an
        // error here means a failed context, whose work runs no more). `stream` is still alive.
        if !self.read.is_complete() {
            let _ = self.read.synchronize();
        }
        // Errors leave the memory to the process.
        if self.stream.context().bind_to_thread().is_ok() {
            // SAFETY: `ptr` was returned by cuMemHostAlloc and is freed once, here; no queued
            // work reads it any more (waited for above).
            let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) };
        }
    }
}

/// The page-locked positions of one captured step, copied by its graph's first node at every
/// replay.
pub struct GraphPositions {
    /// The graph's own page-locked buffer.
    pinned: PinnedPositions,
    /// Positions it copies (the rows of the step it was captured for).
    n: usize,
}

impl std::fmt::Debug for GraphPositions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphPositions")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

/// The step's positions: as staged by the host, and on the device.
#[derive(Default)]
pub(super) struct StagedPositions {
    /// The positions last staged: what `dev` holds once the queued copies ran (or, with
    /// `pending`, will hold once the next copy ran).
    host: Vec<u32>,
    /// The positions on the device, in their first values (grown, never shrunk).
    dev: Option<DeviceBuf<u32>>,
    /// The page-locked sources of eager copies, used in turn (at most [`RING`]).
    ring: Vec<PinnedPositions>,
    /// The ring slot the next eager copy uses.
    next: usize,
    /// `host` is staged but no copy of it is queued yet: the next op that reads positions (or
    /// the graph launched next) copies it.
    pending: bool,
    /// A capture is open on the stream: the positions must be those staged before it (its
    /// graph copies the staged ones at every replay).
    capturing: bool,
}

impl CudaBackend {
    /// Waits until no queued work reads `pinned` any more.
    fn wait_read(&self, pinned: &PinnedPositions) -> Result<(), BackendError> {
        if pinned.read.is_complete() {
            return Ok(());
        }
        pinned
            .read
            .synchronize()
            .map_err(|e| self.err("waiting for a copy of positions", e))
    }

    /// Page-locked memory for `len` positions, with its event.
    fn alloc_pinned_positions(&self, len: usize) -> Result<PinnedPositions, BackendError> {
        let len = len.max(1);
        let bytes = len * std::mem::size_of::<u32>();
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        let read = self
            .stream
            .context()
            .new_event(None)
            .map_err(|e| self.err("an event for page-locked positions", e))?;
        // SAFETY: the context is current; the contents are unspecified until written, and
        // only values written before are ever copied. Not portable: only this backend's
        // context copies from it. Freed by `PinnedPositions`' drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes, 0) }
            .map_err(|e| self.alloc_err("page-locked positions", bytes as u64, e))?
            .cast::<u32>();
        Ok(PinnedPositions {
            ptr,
            len,
            read,
            stream: Arc::clone(&self.stream),
        })
    }

    /// Writes `positions` into `pinned` once no queued copy reads it.
    fn write_pinned(
        &self,
        pinned: &PinnedPositions,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        if positions.len() > pinned.len() {
            return Err(self.err_msg(&format!(
                "{} positions into page-locked memory for {}",
                positions.len(),
                pinned.len()
            )));
        }
        self.wait_read(pinned)?;
        // SAFETY: `ptr` points at `pinned.len()` >= `positions.len()` u32 values of the live
        // allocation `pinned` owns; no queued copy reads them (waited for above), and its
        // owner (the backend's `Reused` under its lock, or a graph used by one thread) is the
        // only way to them.
        unsafe { std::slice::from_raw_parts_mut(pinned.ptr, positions.len()) }
            .copy_from_slice(positions);
        Ok(())
    }

    /// Queues the copy of the first `n` positions of `pinned` into `dev`.
    fn queue_copy(
        &self,
        pinned: &PinnedPositions,
        dev: &DeviceBuf<u32>,
        n: usize,
    ) -> Result<(), BackendError> {
        if n == 0 {
            return Ok(());
        }
        if n > pinned.len() || n > dev.len() {
            return Err(self.err_msg(&format!("{n} positions copied into room for fewer")));
        }
        // SAFETY: `ptr` points at `pinned.len()` >= `n` u32 values of a live page-locked
        // allocation, which stays alive and unwritten until the copy ran (its `read` event,
        // recorded after the copy or the graph launch holding it, is waited for before every
        // write and before it is freed).
        let src = unsafe { std::slice::from_raw_parts(pinned.ptr, n) };
        let dst = dev.device_address(&self.stream);
        // SAFETY: `dst` is the device buffer's address, which holds at least `n` values
        // (checked); the copy runs in stream order before the ops queued after it.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| self.err("copying positions to the device", e))
    }

    /// Records `pinned`'s event after the work queued so far (which includes its reads).
    fn record_read(&self, pinned: &PinnedPositions) -> Result<(), BackendError> {
        pinned
            .read
            .record(&self.stream)
            .map_err(|e| self.err("recording a copy of positions", e))
    }

    /// Stages `positions` (growing the device buffer when too small): the next op that reads
    /// them, or the next graph launch, copies them.
    fn stage(&self, st: &mut StagedPositions, positions: &[u32]) -> Result<(), BackendError> {
        if st.capturing {
            return Err(self.err_msg(&format!(
                "{} positions not staged before the capture (a captured step reads the \
                 positions staged for it)",
                positions.len()
            )));
        }
        grown(
            &self.stream,
            &self.gpu,
            &mut st.dev,
            positions.len().max(MIN_POSITIONS),
        )
        .map_err(|e| self.err("allocating positions", e))?;
        st.host.clear();
        st.host.extend_from_slice(positions);
        st.pending = true;
        Ok(())
    }

    /// Queues the copy of the staged positions through the ring's next slot.
    fn copy_eagerly(&self, st: &mut StagedPositions) -> Result<(), BackendError> {
        let n = st.host.len();
        let Some(dev) = st.dev.as_ref() else {
            return Err(self.err_msg("positions staged without their buffer"));
        };
        let slot = st.next % RING;
        if st.ring.len() <= slot {
            st.ring
                .push(self.alloc_pinned_positions(n.max(MIN_POSITIONS))?);
        } else if st.ring[slot].len() < n {
            // The old slot waits for its last copy as it is dropped.
            st.ring[slot] = self.alloc_pinned_positions(n)?;
        }
        let pinned = &st.ring[slot];
        self.write_pinned(pinned, &st.host)?;
        self.queue_copy(pinned, dev, n)?;
        self.record_read(pinned)?;
        st.next = (slot + 1) % RING;
        st.pending = false;
        Ok(())
    }

    /// `positions` on the device, in the first `positions.len()` values of the returned buffer:
    /// copied from page-locked memory unless they begin the positions staged last (then their
    /// copy is queued if it was not yet).
    pub(super) fn device_positions<'r>(
        &self,
        st: &'r mut StagedPositions,
        positions: &[u32],
    ) -> Result<&'r DeviceBuf<u32>, BackendError> {
        self.device_positions_at(st, 0, positions)
            .map(|(dev, _)| dev)
    }

    /// `positions` on the device where they are rows `first_row..` of the staged positions (a
    /// sequence's rows of a step: no copy of their own), else copied alone: the buffer and the
    /// index of the first of them in it.
    pub(super) fn device_positions_at<'r>(
        &self,
        st: &'r mut StagedPositions,
        first_row: usize,
        positions: &[u32],
    ) -> Result<(&'r DeviceBuf<u32>, usize), BackendError> {
        let rows = first_row..first_row.saturating_add(positions.len());
        let staged = st.dev.is_some() && st.host.get(rows) == Some(positions);
        let at = if staged {
            first_row
        } else {
            self.stage(st, positions)?;
            0
        };
        if st.pending {
            if st.capturing {
                return Err(self.err_msg("positions read in a capture before their copy"));
            }
            self.copy_eagerly(st)?;
        }
        st.dev
            .as_ref()
            .map(|dev| (dev, at))
            .ok_or_else(|| self.err_msg("positions buffer missing"))
    }

    /// [`crate::backend::Backend::stage_positions`]: copied by the step's first op or its
    /// graph.
    pub(super) fn stage_positions_pinned(
        &self,
        st: &mut StagedPositions,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        if st.host.as_slice() != positions || st.dev.is_none() {
            self.stage(st, positions)?;
        }
        Ok(())
    }

    /// Before a capture: page-locked memory for the graph's copy of the staged positions
    /// (`None` when none are staged).
    pub(super) fn graph_positions(
        &self,
        st: &StagedPositions,
    ) -> Result<Option<GraphPositions>, BackendError> {
        if st.host.is_empty() || st.dev.is_none() {
            return Ok(None);
        }
        let n = st.host.len();
        Ok(Some(GraphPositions {
            pinned: self.alloc_pinned_positions(n)?,
            n,
        }))
    }

    /// Opens the positions' part of a capture: the copy from the graph's page-locked memory
    /// becomes its first node, and positions other than the staged ones are refused until
    /// [`CudaBackend::end_positions_capture`].
    pub(super) fn capture_positions(
        &self,
        st: &mut StagedPositions,
        graph: Option<&GraphPositions>,
    ) -> Result<(), BackendError> {
        st.capturing = true;
        if let (Some(graph), Some(dev)) = (graph, st.dev.as_ref()) {
            self.queue_copy(&graph.pinned, dev, graph.n)?;
            st.pending = false;
        }
        Ok(())
    }

    /// Closes the positions' part of a capture: the capture ran nothing, so the staged
    /// positions still have to reach the device (by the graph's launch or the next eager op).
    pub(super) fn end_positions_capture(&self, st: &mut StagedPositions) {
        st.capturing = false;
        st.pending = !st.host.is_empty();
    }

    /// Before a graph launch: a graph that copies positions gets the staged ones in its
    /// page-locked memory (it must have been captured for as many: anything else would replay
    /// the wrong rows); a graph without the copy reads the device buffer, so a pending copy is
    /// queued first.
    pub(super) fn before_graph_launch(
        &self,
        st: &mut StagedPositions,
        graph: Option<&GraphPositions>,
    ) -> Result<(), BackendError> {
        match graph {
            Some(g) if g.n != st.host.len() => Err(self.err_msg(&format!(
                "a graph captured with {} positions launched with {} staged",
                g.n,
                st.host.len()
            ))),
            Some(g) => self.write_pinned(&g.pinned, &st.host),
            None if st.pending => self.copy_eagerly(st),
            None => Ok(()),
        }
    }

    /// After a graph launch whose first node copies the staged positions: they are on their
    /// way, and the host waits for this launch before writing the graph's memory again.
    pub(super) fn after_graph_launch(
        &self,
        st: &mut StagedPositions,
        graph: Option<&GraphPositions>,
    ) -> Result<(), BackendError> {
        if let Some(g) = graph {
            st.pending = false;
            self.record_read(&g.pinned)?;
        }
        Ok(())
    }
}
