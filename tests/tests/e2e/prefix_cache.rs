//! The prefix cache end to end on Gemma 3 270M over two CPU devices: a repeated prompt, a
//! prompt extending it, and an unrelated one report the prompt tokens they reused
//! (`cached_prompt_tokens`, `time_to_first_token_s` on `generate --json`'s final line) and give
//! the greedy tokens of a daemon without the cache; the retained caches are counted in the
//! devices' memory; a live re-split moves them with their layers, and the next request reuses
//! them with unchanged tokens. A load, and a live re-split, that fit only once some of another
//! model's retained caches are dropped drop the least recently used of them, only as many as
//! they need, and go ahead; the others still serve their prompts. `status`, `list` and the
//! metrics report the retained caches and the hits.

use llmd_testkit::e2e::Daemon;

use crate::split_util::{gemma, last_json, load, ok, tokens_of};

/// Tokens each generation makes.
const N: &str = "12";

/// A daemon with two CPU devices of 1 GiB and a prefix cache of `mib` MiB.
fn daemon(mib: u32) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "prefix_cache_mib = {mib}\n\
             [[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\
             [[devices]]\nid = \"cpu:1\"\nmemory_budget = \"1GiB\"\n"
        ))
        .start()
}

/// A raw greedy generation of `prompt` on model `m`: its final `generate --json` line.
fn generate(d: &Daemon, prompt: &str) -> serde_json::Value {
    generate_on(d, "m", prompt)
}

/// A prompt of a few hundred tokens.
fn long_prompt() -> String {
    let mut text = String::from("Notes on the history of Paris, for a guide book. ");
    for i in 0..24 {
        text.push_str(&format!(
            "Chapter {i}: the city grew along the Seine, its bridges and markets busy. "
        ));
    }
    text
}

/// Bytes used on every device, from `status`.
fn used(d: &Daemon) -> u64 {
    let status = d.status_json();
    status["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {status}"))
        .iter()
        .map(|dev| {
            dev["memory_used_bytes"]
                .as_u64()
                .expect("memory_used_bytes")
        })
        .sum()
}

#[test]
fn reused_prefixes_give_a_fresh_daemons_tokens_and_survive_a_resplit() {
    let Some(file) = gemma() else { return };
    let two = ["--devices", "cpu:0,cpu:1", "--split", "1,1"];
    let fresh = daemon(0);
    load(&fresh, &file, "m", &two);
    let d = daemon(64);
    let loaded = load(&d, &file, "m", &two);
    let weights: u64 = loaded["placement"]
        .as_array()
        .expect("placement")
        .iter()
        .map(|s| s["weight_bytes"].as_u64().expect("weight_bytes"))
        .sum();

    let p = long_prompt();
    let first = generate(&d, &p);
    let n = first["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(n > 200, "{first}");
    assert_eq!(
        first["cached_prompt_tokens"], 0,
        "nothing cached yet: {first}"
    );
    assert!(
        first["time_to_first_token_s"].as_f64() > Some(0.0),
        "{first}"
    );
    assert!(
        used(&d) > weights,
        "the finished generation's cache is kept"
    );

    let extended = format!("{p}Chapter 24: the river froze one winter.");
    let unrelated = "A recipe for bread: flour, water, salt and yeast, kneaded and left to rise.";
    let cases: [(&str, &str); 3] = [
        ("the same prompt", &p),
        ("a prompt extending it", &extended),
        ("an unrelated prompt", unrelated),
    ];
    for (what, prompt) in cases {
        let got = generate(&d, prompt);
        let want = generate(&fresh, prompt);
        assert_eq!(tokens_of(&got), tokens_of(&want), "{what}: {got}");
        assert_eq!(
            want["cached_prompt_tokens"], 0,
            "{what}: the cache is off: {want}"
        );
        let cached = got["cached_prompt_tokens"]
            .as_u64()
            .expect("cached_prompt_tokens");
        let total = got["prompt_tokens"].as_u64().expect("prompt_tokens");
        match what {
            "the same prompt" => assert_eq!(cached, n - 1, "{what}: {got}"),
            // The first prompt's tokens, but perhaps its last one, which the new text may
            // merge with.
            "a prompt extending it" => assert!(cached >= n - 2 && cached < total, "{what}: {got}"),
            _ => assert_eq!(cached, 0, "{what}: {got}"),
        }
    }

    // A live re-split moves the retained caches with their layers; the next request reuses
    // them and still gets the fresh daemon's tokens.
    let r = last_json(&ok(&d, &["reload", "m", "--split", "3,1", "--json"]));
    assert_eq!(r["sequences_moved"], 0, "no generation was running: {r}");
    assert!(r["bytes_moved"].as_u64() > Some(0), "{r}");
    let after = generate(&d, &p);
    assert_eq!(
        after["cached_prompt_tokens"].as_u64(),
        Some(n - 1),
        "{after}"
    );
    assert_eq!(tokens_of(&after), tokens_of(&first), "after the re-split");

    // The budget holds: 64 MiB of retained caches at most beside the weights.
    assert!(used(&d) <= weights + (64 << 20), "{}", d.status_json());
}

/// A daemon with one CPU device of `budget` bytes and a prefix cache of 64 MiB.
fn one_device(budget: u64) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "prefix_cache_mib = 64\n\
             [[devices]]\nid = \"cpu:0\"\nmemory_budget = {budget}\n"
        ))
        .start()
}

/// Raw greedy generations of `prompts` on model `name` (finished, so their caches are retained).
fn fill(d: &Daemon, name: &str, prompts: &[String]) {
    for p in prompts {
        ok(
            d,
            &[
                "generate",
                name,
                p,
                "--raw",
                "--temperature",
                "0",
                "-n",
                "4",
            ],
        );
    }
}

/// Asserts that model "a" (the first of `status`) kept some of its four retained caches, not
/// all (only the least recently used went, as many as were needed), and that the most recent,
/// `last`'s, still serves that prompt.
fn some_kept_and_serving(d: &Daemon, last: &str) {
    let status = d.status_json();
    let kept = status["models"][0]["prefix_cache"]["retained_sequences"]
        .as_u64()
        .unwrap_or_else(|| panic!("no prefix_cache in {status}"));
    assert!((1..4).contains(&kept), "only some went: {status}");
    let hit = generate_on(d, "a", last);
    assert!(
        hit["cached_prompt_tokens"].as_u64() > Some(200),
        "the last prompt's cache stays: {hit}"
    );
}

#[test]
fn a_load_or_resplit_that_fits_only_without_some_retained_caches_drops_only_those() {
    let Some(file) = gemma() else { return };
    let f = file.to_str().expect("path");
    let one = ["--devices", "cpu:0", "--ctx", "512"];
    // Four unrelated prompts of a few hundred tokens, each retained after its generation.
    let prompts: Vec<String> = (0..4)
        .map(|k| format!("Volume {k}. {}", long_prompt()))
        .collect();

    // A probe daemon with room to spare measures what the first model and its retained caches
    // take, and what the second model's plan needs.
    let probe = one_device(8 << 30);
    load(&probe, &file, "a", &one);
    let weights = used(&probe);
    fill(&probe, "a", &prompts);
    let retained = used(&probe) - weights;
    assert!(
        retained > 8 << 20,
        "four prompts retain some MiB: {retained}"
    );
    // `status`, `list` and the metrics report them, apart from the weights.
    let want = serde_json::json!({"retained_bytes": retained, "retained_sequences": 4});
    let status = probe.status_json();
    assert_eq!(status["models"][0]["prefix_cache"], want, "{status}");
    let list = last_json(&ok(&probe, &["list", "--json"]));
    assert_eq!(list["models"][0]["prefix_cache"], want, "{list}");
    let text = ok(&probe, &["list"]);
    assert!(text.contains("in 4 finished sequences"), "{text}");
    let metrics = ok(&probe, &["metrics"]);
    let line = format!("llmd_prefix_cache_bytes{{model=\"a\"}} {retained}");
    assert!(metrics.contains(&line), "{line} in {metrics}");
    assert!(
        !metrics.contains("llmd_prefix_cache_hits_total{"),
        "{metrics}"
    );
    // A repeated prompt is a hit reusing all of it but its last token.
    let hit = generate_on(&probe, "a", &prompts[0]);
    let reused = hit["cached_prompt_tokens"]
        .as_u64()
        .expect("cached_prompt_tokens");
    assert!(reused > 200, "{hit}");
    let metrics = ok(&probe, &["metrics"]);
    for line in [
        "llmd_prefix_cache_hits_total{model=\"a\"} 1".to_owned(),
        format!("llmd_prefix_cache_tokens_total{{model=\"a\"}} {reused}"),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let plan = last_json(&ok(
        &probe,
        &["plan", f, "--devices", "cpu:0", "--ctx", "512", "--json"],
    ));
    let need = plan["devices"][0]["need_bytes"]
        .as_u64()
        .expect("need_bytes");
    drop(probe);

    // The second model fits beside the first and half its retained caches (two of four of
    // about the same size), not all of them.
    let budget = weights + need + retained / 2;
    let d = one_device(budget);
    load(&d, &file, "a", &one);
    assert_eq!(used(&d), weights, "the same load takes the same memory");
    fill(&d, "a", &prompts);
    assert_eq!(used(&d), weights + retained);
    assert!(budget - used(&d) < need, "the caches are in the way");
    load(&d, &file, "b", &one);
    assert!(
        used(&d) <= budget,
        "the load fits beside what the first model kept: {}",
        d.status_json()
    );
    some_kept_and_serving(&d, &prompts[3]);
    // Both models serve; the first computes its first prompt again (its cache is gone).
    let again = generate_on(&d, "a", &prompts[0]);
    assert_eq!(again["cached_prompt_tokens"], 0, "{again}");
    let b = generate_on(&d, "b", &prompts[0]);
    assert_eq!(
        tokens_of(&b),
        tokens_of(&again),
        "the same file gives the same tokens"
    );

    // A live re-split that fits only without them drops them too: "b" moves from a second
    // device onto the first, where "a" has retained caches again.
    drop(d);
    let d = Daemon::builder()
        .config(&format!(
            "prefix_cache_mib = 64\n\
             [[devices]]\nid = \"cpu:0\"\nmemory_budget = {budget}\n\
             [[devices]]\nid = \"cpu:1\"\nmemory_budget = \"8GiB\"\n"
        ))
        .start();
    load(&d, &file, "a", &one);
    fill(&d, "a", &prompts);
    load(&d, &file, "b", &["--devices", "cpu:1", "--ctx", "512"]);
    let on_first = |d: &Daemon| {
        d.status_json()["devices"][0]["memory_used_bytes"]
            .as_u64()
            .expect("memory_used_bytes")
    };
    assert_eq!(on_first(&d), weights + retained);
    let r = last_json(&ok(&d, &["reload", "b", "--devices", "cpu:0", "--json"]));
    assert!(r["bytes_moved"].as_u64() > Some(0), "{r}");
    assert!(on_first(&d) <= budget, "{}", d.status_json());
    some_kept_and_serving(&d, &prompts[3]);
    let b = generate_on(&d, "b", &prompts[0]);
    assert_eq!(tokens_of(&b), tokens_of(&again), "after the re-split");
}

/// A raw greedy generation of `prompt` on model `name`: its final `generate --json` line.
fn generate_on(d: &Daemon, name: &str, prompt: &str) -> serde_json::Value {
    let args = [
        "generate",
        name,
        prompt,
        "--raw",
        "--temperature",
        "0",
        "-n",
        N,
        "--json",
    ];
    last_json(&ok(d, &args))
}
