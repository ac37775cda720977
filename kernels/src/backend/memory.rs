//! The memory budget of one device: the bytes its weights and KV caches hold, charged through
//! leases that give their bytes back when dropped. Shared by every backend (and every model's
//! backend on the same device), so accounting stays right as models come, go and move.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::BackendError;

/// A device's budget and the bytes in use.
#[derive(Debug)]
pub struct DeviceMemory {
    /// Bytes currently leased.
    used: AtomicU64,
    /// The most bytes leased at once since creation or the last [`DeviceMemory::reset_peak`].
    peak: AtomicU64,
    /// Bytes that may be leased at most.
    budget: u64,
}

/// Bytes charged to a [`DeviceMemory`]; returned on drop.
#[derive(Debug)]
pub struct Lease {
    /// Where the bytes were charged.
    memory: Arc<DeviceMemory>,
    /// How many.
    bytes: u64,
}

impl DeviceMemory {
    /// A device memory of `budget` bytes, none used.
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(DeviceMemory {
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            budget,
        })
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most bytes in use at once since creation or the last [`DeviceMemory::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts the peak afresh from the bytes in use now.
    pub fn reset_peak(&self) {
        self.peak.store(self.used(), Ordering::SeqCst);
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Charges `bytes` for `what` on `device`, or fails with `OutOfMemory` (charging nothing)
    /// when they would exceed the budget.
    pub fn charge(
        self: &Arc<Self>,
        device: &str,
        what: &str,
        bytes: u64,
    ) -> Result<Lease, BackendError> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.budget {
                return Err(BackendError::OutOfMemory {
                    device: device.to_string(),
                    what: what.to_string(),
                    bytes,
                });
            }
            match self
                .used
                .compare_exchange(used, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::SeqCst);
                    return Ok(Lease {
                        memory: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Lease {
    /// Bytes this lease holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_refused_past_the_budget_and_returned_on_drop() {
        let m = DeviceMemory::new(100);
        let a = m.charge("cpu:0", "a", 60).expect("fits");
        assert!(matches!(
            m.charge("cpu:0", "b", 41),
            Err(BackendError::OutOfMemory { bytes: 41, .. })
        ));
        assert_eq!(m.used(), 60);
        let b = m.charge("cpu:0", "b", 40).expect("fits exactly");
        assert_eq!((m.used(), b.bytes()), (100, 40));
        drop(a);
        drop(b);
        assert_eq!((m.used(), m.peak()), (0, 100));
        m.reset_peak();
        assert_eq!(m.peak(), 0);
    }
}
