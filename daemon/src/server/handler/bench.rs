//! `bench`: prompt processing (`pp`) speed on an empty context, and generation (`tg`) speed
//! continuing after that prompt (llama-bench's `tg` at a depth of `n_prompt`, `-d`), averaged
//! over repetitions.

use llmd_shared::{BenchReply, BenchRequest, ErrorCode, ErrorReply, Event, Progress};

use super::{model_named, Context};
use crate::engine::Job;

/// Most repetitions one request may ask for.
const MAX_REPETITIONS: u32 = 100;

/// Runs the benchmark.
pub async fn handle(req: BenchRequest, ctx: &Context) -> Result<BenchReply, ErrorReply> {
    let model = model_named(ctx, &req.model)?;
    if req.repetitions == 0
        || req.repetitions > MAX_REPETITIONS
        || (req.n_prompt == 0 && req.n_gen == 0)
    {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("need 1..={MAX_REPETITIONS} repetitions and a prompt or generation length"),
        ));
    }
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..req.repetitions {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Bench {
            n_prompt: req.n_prompt as usize,
            n_gen: req.n_gen as usize,
            reply: tx,
        };
        model.submit(job)?;
        let r = rx
            .await
            .map_err(|_| model.unavailable("the model's worker stopped"))?
            .map_err(|m| ErrorReply::new(ErrorCode::BadRequest, m))?;
        pp.push(r.pp_tokens_per_s);
        tg.push(r.tg_tokens_per_s);
        ctx.event(Event::Progress(Progress {
            done: u64::from(rep + 1),
            total: u64::from(req.repetitions),
            what: "runs".into(),
        }))
        .await?;
    }
    let (pp_mean, pp_sd) = mean_sd(&pp);
    let (tg_mean, tg_sd) = mean_sd(&tg);
    Ok(BenchReply {
        model: req.model,
        n_prompt: req.n_prompt,
        n_gen: req.n_gen,
        threads: model.threads,
        pp: pp_mean,
        tg: tg_mean,
        pp_stddev: pp_sd,
        tg_stddev: tg_sd,
    })
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}
