//! `llmctl bench NAME`: prompt processing and generation speed, as llama-bench measures them.
//! `--json`: `{model, n_prompt, n_gen, threads, pp, tg, pp_stddev, tg_stddev}` (tokens/s).

use llmd_shared::{BenchRequest, Reply, Request};

use super::{unexpected, Ctx};
use crate::cli::BenchArgs;
use crate::CtlError;

/// Runs the benchmark.
pub fn run(args: BenchArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut client = ctx.connect()?;
    client.set_reply_timeout(None)?;
    let request = Request::Bench(BenchRequest {
        model: args.name,
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        repetitions: args.repetitions,
    });
    let reply = client.request(&request, |_| Ok(()))?;
    let Reply::Bench(r) = reply else {
        return Err(unexpected("bench"));
    };
    if ctx.out.json {
        return ctx.out.json_line(&r);
    }
    let mut text = format!("model {} ({} threads)\n", r.model, r.threads);
    if r.n_prompt > 0 {
        text.push_str(&format!(
            "pp{:<6} {:>9.2} ± {:.2} tokens/s\n",
            r.n_prompt, r.pp, r.pp_stddev
        ));
    }
    if r.n_gen > 0 {
        text.push_str(&format!(
            "tg{:<6} {:>9.2} ± {:.2} tokens/s\n",
            r.n_gen, r.tg, r.tg_stddev
        ));
    }
    ctx.out.text(&text)
}
