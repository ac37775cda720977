//! Greedy generation from a GGUF file on CPU devices, printing token ids and timing; a developer
//! tool for comparing against llama.cpp (`cargo run --release --example greedy -- MODEL PROMPT N`).

use std::sync::Arc;
use std::time::Instant;

use llmd::engine::sampler::argmax;
use llmd::model::load::{build_pipeline, OpenedModel, StageSpec};
use llmd::model::placement::assign_layers;
use llmd::model::Batch;
use llmd::model::StageBackend;
use llmd_kernels::backend::{CpuBackend, DeviceMemory};
use llmd_kernels::cpu::ThreadPool;
use llmd_tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: greedy MODEL PROMPT N [SPLIT]"))?;
    let prompt = args.get(2).cloned().unwrap_or_else(|| "Hello".into());
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let split: Vec<f64> = args
        .get(4)
        .map(|s| s.split(',').map(|x| x.parse().unwrap_or(1.0)).collect())
        .unwrap_or(vec![1.0]);
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let model = OpenedModel::open(path.as_ref())?;
    let tok = Tokenizer::from_metadata(&model.description.tokenizer)?;
    let pool = Arc::new(ThreadPool::new(threads)?);
    let (ranges, head) = assign_layers(model.config.n_layer, &split);
    let stages = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| StageSpec {
            backend: StageBackend::Cpu(Arc::new(CpuBackend::new(
                format!("cpu:{i}"),
                DeviceMemory::new(u64::MAX),
                pool.clone(),
            ))),
            layers: r.clone(),
            head: i == head,
        })
        .filter(|s| !s.layers.is_empty() || s.head)
        .collect();
    let mut p = build_pipeline(&model, stages, 512, 1, |_, _| {})?;
    let ids = tok.encode(&prompt, true, false);
    println!("prompt ids: {ids:?}");
    p.add_sequence(1, ids.len() + n + 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut b = Batch::default();
    for (i, &t) in ids.iter().enumerate() {
        b.push(t, i as u32, 1, i + 1 == ids.len());
    }
    let mut logits = Vec::new();
    let t0 = Instant::now();
    p.forward(&b, &mut logits)?;
    let pp = t0.elapsed();
    let mut out = Vec::new();
    let mut top: Vec<(f32, usize)> = logits
        .iter()
        .copied()
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("top5 at last prompt pos: {:?}", &top[..5]);
    let t1 = Instant::now();
    let mut next = argmax(&logits);
    for i in 0..n {
        out.push(next);
        b.clear();
        b.push(next, (ids.len() + i) as u32, 1, true);
        p.forward(&b, &mut logits)?;
        next = argmax(&logits);
    }
    let tg = t1.elapsed();
    println!("generated ids: {out:?}");
    println!(
        "text: {:?}",
        String::from_utf8_lossy(&tok.decode(&out, false, false))
    );
    println!(
        "prefill {:.1} tok/s, decode {:.1} tok/s",
        ids.len() as f64 / pp.as_secs_f64(),
        n as f64 / tg.as_secs_f64()
    );
    Ok(())
}
