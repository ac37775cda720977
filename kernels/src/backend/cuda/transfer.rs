//! Bytes crossing a GPU's edge: activations written and read by the host, copies in from the
//! host, this GPU or a peer ([`CudaBackend::copy_in`]), views other devices copy from, the
//! activations handed between pipeline stages (ordered by events), page-locked staging and
//! [`read_device_bytes`].

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, DevicePtr, DevicePtrMut};

use super::{
    check_len, shape, ActivationsLocation, BackendError, BytesAt, CudaBackend, DeviceActivations,
    DeviceBuf, DeviceBytes, HostStaging,
};

/// Page-locked host memory for activations crossing to and from a GPU: copies from it run as
/// direct DMA instead of through the driver's own staging buffer. Its values are handed out
/// without a wait (see [`HostStaging::values`]: the callers order the transfers).
struct PinnedStaging {
    /// The allocation (freed on drop).
    slice: cudarc::driver::PinnedHostSlice<f32>,
    /// Its first value, taken once at allocation (cudarc's accessors wait on an event per call).
    ptr: *mut f32,
}

// SAFETY: the memory is owned by `slice` (page-locked host memory, valid from any thread until
// freed) and only reached through `&mut self`, so moving the owner between threads is sound.
unsafe impl Send for PinnedStaging {}

impl HostStaging for PinnedStaging {
    fn values(&mut self) -> Result<&mut [f32], BackendError> {
        // SAFETY: `ptr` points at `slice.len()` f32 values of the live allocation `slice`
        // owns, zeroed at allocation; the exclusive borrow of `self` is the only way to them.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.slice.len()) })
    }

    fn len(&self) -> usize {
        self.slice.len()
    }
}

impl CudaBackend {
    /// The first `len` values of `buf` as bytes another device can copy, once the work queued
    /// on this device's stream (which may still write them) has finished.
    pub(super) fn bytes_of<'a, T: cudarc::driver::DeviceRepr>(
        &'a self,
        buf: &'a CudaSlice<T>,
        len: usize,
    ) -> Result<DeviceBytes<'a>, BackendError> {
        check_len("view", buf.len(), len)?;
        self.stream
            .synchronize()
            .map_err(|e| self.err("finishing work before a copy", e))?;
        let (ptr, _record) = buf.device_ptr(&self.stream);
        Ok(DeviceBytes {
            device: &self.name,
            len: len * std::mem::size_of::<T>(),
            at: BytesAt::Cuda {
                ctx: self.stream.context(),
                ptr,
            },
        })
    }

    /// Copies `src` into the start of `dst` and waits for the copy, so that `src` may be freed
    /// as soon as this returns.
    pub(super) fn copy_in<T: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut cudarc::driver::CudaViewMut<'_, T>,
        src: &DeviceBytes<'_>,
        what: &str,
    ) -> Result<(), BackendError> {
        // A CPU weight held packed is unpacked into GGUF's layout on the host first.
        let unpacked;
        let src = if let BytesAt::HostPacked { .. } = src.at {
            let mut host = vec![0u8; src.len];
            src.read_into(&mut host)?;
            unpacked = host;
            &DeviceBytes::host(src.device, &unpacked)
        } else {
            src
        };
        // SAFETY: `src` borrows its allocation (or host memory) for this whole call, and its
        // owner finished writing it before lending it; the copy has run when `synchronize`
        // returns, before the borrow ends.
        unsafe { self.enqueue_copy_in(dst, src, what) }?;
        self.stream
            .synchronize()
            .map_err(|e| self.err(&format!("copying {what} from {}", src.device), e))
    }

    /// Enqueues on this stream a copy of `src` into the start of `dst`: host to device, device to
    /// device within this context, or peer to peer from another GPU's context (the driver
    /// staging through the host where P2P is not possible).
    ///
    /// # Safety
    /// `src` must stay valid and unwritten until the copy has run on this stream.
    pub(super) unsafe fn enqueue_copy_in<T: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut cudarc::driver::CudaViewMut<'_, T>,
        src: &DeviceBytes<'_>,
        what: &str,
    ) -> Result<(), BackendError> {
        let room = dst.len() * std::mem::size_of::<T>();
        if src.len > room {
            return Err(shape(
                "copy",
                format!("{} bytes of {what} into {room}", src.len),
            ));
        }
        if src.len == 0 {
            return Ok(());
        }
        let here = self.stream.context();
        here.bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        let stream = self.stream.cu_stream();
        let (dst_ptr, _record) = dst.device_ptr_mut(&self.stream);
        let copied = match src.at {
            // SAFETY: `dst` holds at least `src.len` bytes (checked); the host slice is valid
            // for the copy (the caller's contract).
            BytesAt::Host(bytes) => unsafe {
                cudarc::driver::result::memcpy_htod_async(dst_ptr, bytes, stream)
            },
            // `copy_in` unpacks these first; an asynchronous copy has nowhere to unpack them.
            BytesAt::HostPacked { .. } => {
                return Err(shape(
                    "copy",
                    format!("packed {what} from {} need a synchronous copy", src.device),
                ))
            }
            // SAFETY: both addresses are live allocations of this context, `dst` large enough.
            BytesAt::Cuda { ctx, ptr } if ctx.cu_ctx() == here.cu_ctx() => unsafe {
                cudarc::driver::result::memcpy_dtod_async(dst_ptr, ptr, src.len, stream)
            },
            // SAFETY: as above across contexts; `ctx` outlives the borrow of `src`.
            BytesAt::Cuda { ctx, ptr } => unsafe {
                cudarc::driver::result::memcpy_peer_async(
                    here.cu_ctx(),
                    dst_ptr,
                    ctx.cu_ctx(),
                    ptr,
                    src.len,
                    stream,
                )
            },
        };
        copied.map_err(|e| {
            self.err(
                &format!("copying {what} from {} to {}", src.device, self.name),
                e,
            )
        })
    }

    pub(super) fn write_activations_on_device(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &[f32],
    ) -> Result<(), BackendError> {
        check_len("write_activations", dst.len(), src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(0..src.len()))
            .map_err(|e| self.err("writing activations", e))
    }

    pub(super) fn read_activations_on_device(
        &self,
        src: &DeviceBuf<f32>,
        dst: &mut [f32],
    ) -> Result<(), BackendError> {
        check_len("read_activations", src.len(), dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(&src.slice(0..dst.len()), dst)
            .map_err(|e| self.err("reading activations", e))?;
        self.stream
            .synchronize()
            .map_err(|e| self.err("reading activations", e))
    }

    pub(super) fn gather_rows_on_device(
        &self,
        src: &DeviceBuf<f32>,
        rows: &[u32],
        width: usize,
        out_row: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gather_rows";
        check_len(OP, out.len(), (out_row + rows.len()) * width)?;
        let mut i = 0;
        while i < rows.len() {
            // A run of consecutive source rows is one device-to-device copy (decode: one).
            let first = rows[i] as usize;
            let mut n = 1;
            while i + n < rows.len() && rows[i + n] as usize == first + n {
                n += 1;
            }
            check_len(OP, src.len(), (first + n) * width)?;
            self.stream
                .memcpy_dtod(
                    &src.slice(first * width..(first + n) * width),
                    &mut out.slice_mut((out_row + i) * width..(out_row + i + n) * width),
                )
                .map_err(|e| self.err("gathering rows", e))?;
            i += n;
        }
        Ok(())
    }

    pub(super) fn export_activations_on_device(
        &self,
        a: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<Option<DeviceActivations>, BackendError> {
        check_len("export_activations", a.len(), len)?;
        // No host wait: the importer's stream waits for this event, recorded after the writes.
        let ready = self
            .stream
            .record_event(None)
            .map_err(|e| self.err("recording the end of a stage", e))?;
        let (ptr, _record) = a.device_ptr(&self.stream);
        Ok(Some(DeviceActivations {
            kind: "cuda",
            device: self.name.clone(),
            len,
            location: ActivationsLocation::Cuda {
                ctx: Arc::clone(self.stream.context()),
                ptr,
                stream: Arc::clone(&self.stream),
                ready: Arc::new(ready),
            },
        }))
    }

    pub(super) fn import_activations_on_device(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceActivations,
    ) -> Result<bool, BackendError> {
        let ActivationsLocation::Cuda {
            ctx,
            ptr,
            stream: producer,
            ready,
        } = &src.location;
        if src.kind != "cuda" {
            return Ok(false);
        }
        check_len("import_activations", dst.len(), src.len)?;
        if src.len == 0 {
            return Ok(true);
        }
        let from = DeviceBytes {
            device: &src.device,
            len: src.len * std::mem::size_of::<f32>(),
            at: BytesAt::Cuda { ctx, ptr: *ptr },
        };
        // The copy runs after the producer's writes ...
        self.stream
            .wait(ready)
            .map_err(|e| self.err("waiting for the previous stage", e))?;
        // SAFETY: the exporting stage's buffer holds `len` values; this stream waits for the
        // event recorded after the writes, and the producer's stream waits (below) for the copy
        // before it writes the buffer again. `ctx` is kept alive by `src`; `dst` holds at least
        // `len` values (checked).
        unsafe { self.enqueue_copy_in(&mut dst.slice_mut(..), &from, "activations") }?;
        // ... and before the producer writes its buffer again.
        let copied = self
            .stream
            .record_event(None)
            .map_err(|e| self.err("recording the activations' copy", e))?;
        let waited = producer.wait(&copied);
        // Back in this backend's context for what follows.
        self.stream
            .context()
            .bind_to_thread()
            .and(waited)
            .map_err(|e| self.err("ordering the previous stage after the copy", e))?;
        Ok(true)
    }

    pub(super) fn alloc_host_staging_on_device(
        &self,
        len: usize,
    ) -> Option<Result<Box<dyn HostStaging>, BackendError>> {
        // SAFETY: the allocation's contents are unspecified until written; `PinnedStaging`
        // zeroes them before handing them out. PORTABLE: the pipeline's one staging buffer is
        // copied from and to by every GPU stage, and only portable memory is page-locked for
        // the contexts of the GPUs other than the allocating one (the others would fall back
        // to staged, pageable copies). Not write-combined: the host reads these values back.
        let pinned = unsafe {
            self.stream.context().alloc_pinned_with_flags::<f32>(
                len.max(1),
                cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        };
        Some(match pinned {
            Ok(mut slice) => match slice.as_mut_slice() {
                Ok(values) => {
                    values.fill(0.0);
                    let ptr = values.as_mut_ptr();
                    Ok(Box::new(PinnedStaging { slice, ptr }) as Box<dyn HostStaging>)
                }
                Err(e) => Err(self.err("page-locked host memory", e)),
            },
            Err(e) => Err(self.alloc_err("page-locked host memory", len as u64 * 4, e)),
        })
    }
}

/// Copies `dst.len()` bytes at `ptr` in `ctx` to the host (a synchronous copy; the owner of the
/// allocation finished writing it before handing out its address).
pub(in crate::backend) fn read_device_bytes(
    ctx: &Arc<CudaContext>,
    ptr: u64,
    dst: &mut [u8],
) -> Result<(), String> {
    if dst.is_empty() {
        return Ok(());
    }
    ctx.bind_to_thread()
        .map_err(|e| format!("binding the context: {e}"))?;
    // SAFETY: `ptr` is the start of a live allocation of `ctx` holding at least `dst.len()`
    // bytes (a `DeviceBytes` borrows it for as long as this runs), and `dst` is host memory of
    // exactly that length.
    unsafe { cudarc::driver::result::memcpy_dtoh_sync(dst, ptr) }
        .map_err(|e| format!("copying to the host: {e}"))
}
