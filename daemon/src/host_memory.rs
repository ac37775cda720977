//! The daemon's own host memory: how much of it is resident (from `/proc/self/status`, for
//! `status` and the metrics), and the allocator policy that lets an unload, a `--replace` or a
//! re-split give memory back to the system.

use std::sync::Once;

/// Allocations at least this large get pages of their own from the kernel (glibc's
/// `M_MMAP_THRESHOLD`) and go back to it when freed. glibc's default threshold rises after the
/// first large free up to 32 MiB, after which weights and KV caches of a few MiB land on the
/// heap and stay resident after an unload; a fixed 1 MiB keeps every weight and cache its own
/// mapping while small allocations stay on the heap.
const MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;

/// Sets the allocator policy once per process (see [`MMAP_THRESHOLD_BYTES`]).
pub fn return_freed_memory_to_the_system() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes glibc's allocator parameters; it is called once, before
        // the daemon's threads allocate much, and takes plain integers.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        if ok != 1 {
            tracing::warn!(
                "could not set the allocator's mmap threshold; freed memory may stay resident"
            );
        }
    });
}

/// Returns the free memory at the top of the allocator's heaps to the system
/// (`malloc_trim`), after a model was freed: its many small allocations (a vocabulary's
/// strings, norms, small caches) live on the heap, below the mmap threshold.
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heaps; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResidentMemory {
    /// Resident now (`VmRSS`).
    pub rss: u64,
    /// Of which anonymous (`RssAnon`: owned weights, caches, buffers).
    pub anon: u64,
    /// Of which file-backed (`RssFile`: mapped files, the binary itself).
    pub file: u64,
    /// The most resident so far (`VmHWM`).
    pub peak: u64,
}

impl ResidentMemory {
    /// This process's figures; zeros where `/proc/self/status` cannot be read.
    pub fn of_self() -> Self {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    /// The figures in the text of a `/proc/PID/status` file.
    pub fn parse(status: &str) -> Self {
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        ResidentMemory {
            rss: kib("VmRSS"),
            anon: kib("RssAnon"),
            file: kib("RssFile"),
            peak: kib("VmHWM"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let text = "Name:\tllmd\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 1000 kB\n\
                    RssFile:\t 24 kB\n";
        assert_eq!(
            ResidentMemory::parse(text),
            ResidentMemory {
                rss: 1024 * 1024,
                anon: 1000 * 1024,
                file: 24 * 1024,
                peak: 2048 * 1024,
            }
        );
        let me = ResidentMemory::of_self();
        assert!(
            me.rss > 0 && me.peak >= me.rss && me.anon <= me.rss,
            "{me:?}"
        );
    }
}
