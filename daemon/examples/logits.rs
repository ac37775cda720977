//! Prints the logits of every position of a token sequence as little-endian f32 to stdout; a
//! developer tool for comparing against llama.cpp
//! (`cargo run --release --example logits -- MODEL 3,17,99 > out.f32`).

use std::io::Write;
use std::sync::Arc;

use llmd::model::load::{build_pipeline, OpenedModel, StageSpec};
use llmd::model::{Batch, StageBackend};
use llmd_kernels::backend::{CpuBackend, DeviceMemory};
use llmd_kernels::cpu::ThreadPool;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(ids)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: logits MODEL ID,ID,...");
    };
    let tokens: Vec<u32> = ids.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let model = OpenedModel::open(path.as_ref())?;
    let pool = Arc::new(ThreadPool::new(2)?);
    let backend = StageBackend::Cpu(Arc::new(CpuBackend::new(
        "cpu:0",
        DeviceMemory::new(u64::MAX),
        pool,
    )));
    let stages = vec![StageSpec {
        backend,
        layers: 0..model.config.n_layer,
        head: true,
    }];
    let mut p = build_pipeline(&model, stages, tokens.len(), tokens.len(), |_, _| {})?;
    p.add_sequence(1, tokens.len())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = Batch::default();
    for (i, &t) in tokens.iter().enumerate() {
        batch.push(t, i as u32, 1, true);
    }
    let mut logits = Vec::new();
    p.forward(&batch, &mut logits)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::io::stdout().write_all(&bytes)?;
    Ok(())
}
