//! CUDA graphs of a stage's decode step (issue 18): the layers of a step in which every sequence
//! (up to [`MAX_GRAPH_ROWS`], with f16 or quantized KV caches) decodes one token are captured
//! once per batch shape and replayed with one launch, instead of about eleven launches per layer
//! ([`StepGraphs`]).
//!
//! A shape ([`StepShape`]) is what a captured step freezes: which sequences' KV caches it reads
//! and writes, in batch order, and the key split of its attention launches. What changes from
//! one step to the next (the positions, hence the context lengths) lives in device memory: the
//! host stages the step's positions before each launch ([`Backend::stage_positions`]); they are
//! written into page-locked memory of the graph's own, whose copy to the device is the graph's
//! first node, so a replay is the whole step in one launch (the host waits on an event before
//! rewriting that memory, in case the previous launch has not copied it yet). The first step of a shape runs
//! eagerly, which also grows the buffers the backend keeps between calls to what the shape
//! needs, so that nothing allocates during the capture at its second step; every later step of
//! the shape replays the graph. A graph is captured anew when those kept buffers were
//! reallocated since ([`Backend::graph_epoch`]), and every graph is dropped when the stage's KV
//! caches or weights change (sequences added, forked or removed; experts moved) and with the
//! stage itself (unload, re-split). A step whose capture the device refuses runs eagerly, and its
//! shape is not tried again. `LLMD_CUDA_GRAPHS=0` turns graphs off (for comparison).

use std::sync::OnceLock;

use llmd_kernels::backend::{Backend, BackendError, StepGraph};

use super::batch::SeqId;

/// The environment switch: `0` runs every step eagerly.
pub const GRAPHS_ENV: &str = "LLMD_CUDA_GRAPHS";

/// Most graphs one stage keeps (the least recently used goes first): each batch composition
/// has its own, and a server whose batches change every step would otherwise pile up graphs,
/// each holding its instantiated nodes in driver memory. Eight covers a steady batch through its
/// attention's few key-split changes and a couple of compositions besides.
pub const MAX_GRAPHS: usize = 8;

/// Most rows (sequences) of a captured step: four times the scheduler's `MAX_SEQUENCES` (8),
/// so that raising it keeps decode on graphs. Up to 8 rows a step runs the matrix-vector
/// kernels and one decode attention launch; from 9 the int8 tensor-core products (their
/// activations in a kept buffer, so nothing allocates in a capture) and one attention launch
/// per sequence, each split as for the batch's longest context, so the launches follow from the
/// shape alone. The bound keeps a graph's nodes (about two attention launches per sequence and
/// layer) and the re-captures of a changing batch in proportion.
pub const MAX_GRAPH_ROWS: usize = 32;

/// Whether graphs are on (`LLMD_CUDA_GRAPHS` is not `0`), read once.
pub fn graphs_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(GRAPHS_ENV).map_or(true, |v| v.trim() != "0"))
}

/// What a captured step freezes: its launches' shapes and the caches they address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepShape {
    /// The sequences of the batch, one row each, in batch order (their caches' addresses are in
    /// the captured kernels' arguments).
    pub seqs: Vec<SeqId>,
    /// Key splits of the decode attention launches (their grid depends on it).
    pub splits: usize,
}

/// Where a shape stands.
enum State {
    /// Ran eagerly once: captured at its next step.
    Seen,
    /// Captured: replayed while the backend's kept buffers are those of `epoch`.
    Captured {
        /// The graph.
        graph: StepGraph,
        /// [`Backend::graph_epoch`] when it was captured.
        epoch: u64,
    },
    /// The device refused its capture: it runs eagerly.
    Refused,
}

/// One shape's graph.
struct Entry {
    /// The shape.
    shape: StepShape,
    /// Its state.
    state: State,
    /// The step it was last used at (eviction order).
    used: u64,
}

/// What the graphs of a stage have done, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphCounts {
    /// Graphs captured.
    pub captures: u64,
    /// Steps replayed from a graph.
    pub replays: u64,
    /// Steps run eagerly (graphs off, a shape's first step, a refused capture).
    pub eager: u64,
    /// Captures the device refused.
    pub refused: u64,
}

impl std::ops::Add for GraphCounts {
    type Output = GraphCounts;
    fn add(self, o: GraphCounts) -> GraphCounts {
        GraphCounts {
            captures: self.captures + o.captures,
            replays: self.replays + o.replays,
            eager: self.eager + o.eager,
            refused: self.refused + o.refused,
        }
    }
}

/// The graphs of one stage's decode steps, by shape (at most [`MAX_GRAPHS`]).
pub struct StepGraphs {
    /// Whether to use graphs at all ([`graphs_enabled`] at the stage's creation).
    enabled: bool,
    /// The shapes seen, with their graphs.
    entries: Vec<Entry>,
    /// Steps run, the clock of `Entry::used`.
    clock: u64,
    /// What was done so far.
    counts: GraphCounts,
}

impl Default for StepGraphs {
    fn default() -> Self {
        StepGraphs::new(graphs_enabled())
    }
}

impl StepGraphs {
    /// Graphs for a stage, used when `enabled`.
    pub fn new(enabled: bool) -> Self {
        StepGraphs {
            enabled,
            entries: Vec::new(),
            clock: 0,
            counts: GraphCounts::default(),
        }
    }

    /// Whether steps are captured at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Drops every graph (the caches or weights they address changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Graphs held now.
    pub fn held(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, State::Captured { .. }))
            .count()
    }

    /// What was done so far.
    pub fn counts(&self) -> GraphCounts {
        self.counts
    }

    /// Runs the step of `shape` on `b`, whose work `record` queues: eagerly (graphs off, the
    /// shape's first step, a refused capture), or from its graph, captured now if it has none
    /// yet (or only one of an older [`Backend::graph_epoch`]). The positions the step reads
    /// must be on the device already ([`Backend::stage_positions`]).
    pub fn run<B: Backend, E: From<BackendError> + std::fmt::Display>(
        &mut self,
        b: &B,
        shape: StepShape,
        record: &mut dyn FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.enabled {
            self.counts.eager += 1;
            return record();
        }
        self.clock += 1;
        let epoch = b.graph_epoch();
        let Some(i) = self.entries.iter().position(|e| e.shape == shape) else {
            if self.entries.len() >= MAX_GRAPHS {
                if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used)
                {
                    self.entries.swap_remove(oldest);
                }
            }
            self.entries.push(Entry {
                shape,
                state: State::Seen,
                used: self.clock,
            });
            self.counts.eager += 1;
            return record();
        };
        let entry = &mut self.entries[i];
        entry.used = self.clock;
        match &entry.state {
            State::Refused => {
                self.counts.eager += 1;
                return record();
            }
            State::Captured { graph, epoch: at } if *at == epoch => {
                self.counts.replays += 1;
                return b.launch_step(graph).map_err(E::from);
            }
            // Seen, or captured before the kept buffers moved: (re)capture below.
            _ => {}
        }
        // The old graph goes before the capture (its addresses may be stale).
        entry.state = State::Seen;
        match b.capture_step(record) {
            Some(Ok(graph)) => {
                b.launch_step(&graph).map_err(E::from)?;
                self.counts.captures += 1;
                self.counts.replays += 1;
                entry.state = State::Captured {
                    graph,
                    epoch: b.graph_epoch(),
                };
                Ok(())
            }
            Some(Err(e)) => {
                // The capture ran nothing: the step runs eagerly, and so will this shape's.
                tracing::warn!(
                    "{}: a decode step of {} sequences cannot be captured as a CUDA graph ({e}); \
                     it runs eagerly",
                    b.device_name(),
                    entry.shape.seqs.len()
                );
                entry.state = State::Refused;
                self.counts.refused += 1;
                self.counts.eager += 1;
                record()
            }
            None => {
                entry.state = State::Refused;
                self.counts.eager += 1;
                record()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use llmd_kernels::backend::{CpuBackend, DeviceMemory};
    use llmd_kernels::cpu::ThreadPool;

    use super::*;

    fn cpu() -> CpuBackend {
        let pool = Arc::new(ThreadPool::new(1).expect("a thread"));
        CpuBackend::new("cpu:0", DeviceMemory::new(u64::MAX), pool)
    }

    fn shape(seqs: &[SeqId]) -> StepShape {
        StepShape {
            seqs: seqs.to_vec(),
            splits: 1,
        }
    }

    /// Runs a step of `s`, counting how often its work ran on the host.
    fn step(graphs: &mut StepGraphs, b: &CpuBackend, s: StepShape, ran: &mut u32) {
        graphs
            .run(b, s, &mut || {
                *ran += 1;
                Ok::<(), BackendError>(())
            })
            .expect("step");
    }

    /// Off, every step runs eagerly and nothing is kept.
    #[test]
    fn graphs_off_run_every_step_eagerly() {
        let b = cpu();
        let mut graphs = StepGraphs::new(false);
        let mut ran = 0;
        for _ in 0..3 {
            step(&mut graphs, &b, shape(&[1]), &mut ran);
        }
        assert_eq!(ran, 3);
        assert_eq!(graphs.counts().eager, 3);
        assert_eq!(graphs.held(), 0);
    }

    /// A device without graphs (the CPU) runs every step eagerly: the shape's second step finds
    /// no graph to capture and the shape is not tried again.
    #[test]
    fn a_device_without_graphs_runs_eagerly() {
        let b = cpu();
        let mut graphs = StepGraphs::new(true);
        let mut ran = 0;
        for _ in 0..4 {
            step(&mut graphs, &b, shape(&[1, 2]), &mut ran);
        }
        assert_eq!(ran, 4, "every step ran, once");
        let c = graphs.counts();
        assert_eq!((c.eager, c.captures, c.replays, c.refused), (4, 0, 0, 0));
    }

    /// However many shapes pass, at most MAX_GRAPHS are tracked, the least recently used going
    /// first; clearing drops them all.
    #[test]
    fn shapes_are_bounded() {
        let b = cpu();
        let mut graphs = StepGraphs::new(true);
        let mut ran = 0;
        for seq in 0..3 * MAX_GRAPHS as SeqId {
            step(&mut graphs, &b, shape(&[seq]), &mut ran);
            // The first shape stays in use, so it is never the one evicted.
            step(&mut graphs, &b, shape(&[1000]), &mut ran);
            assert!(graphs.entries.len() <= MAX_GRAPHS);
        }
        assert!(graphs.entries.iter().any(|e| e.shape == shape(&[1000])));
        graphs.clear();
        assert!(graphs.entries.is_empty());
    }
}
