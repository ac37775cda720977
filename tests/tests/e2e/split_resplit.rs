//! Live re-split: a long greedy generation re-split mid-stream 1,1 → 3,1 → 1,3 → one device
//! produces exactly the tokens of an undisturbed run, and afterwards each device holds exactly
//! what the plan says.

use crate::split_util;

use split_util::{
    daemon_with_devices, gemma, greedy, last_json, load, ok, ranges, Background, Range,
};

/// Tokens of the long generation: enough that three re-splits (about half a second each) land
/// while it runs even on a fast machine.
const N: u32 = 128;

#[test]
fn resplits_mid_generation_keep_the_tokens() {
    let Some(file) = gemma() else { return };
    let d = daemon_with_devices(&["1GiB", "1GiB"]);
    load(
        &d,
        &file,
        "m",
        &["--devices", "cpu:0,cpu:1", "--split", "1,1"],
    );
    let reference = greedy(&d, "m", N);
    assert_eq!(reference.len(), N as usize);

    let mut gen = Background::start(&d, "m", N);
    let steps: [(&[&str], Vec<Range>); 3] = [
        (
            &["--split", "3,1"],
            vec![
                ("cpu:0".into(), 0, 15, false),
                ("cpu:1".into(), 15, 18, true),
            ],
        ),
        (
            &["--split", "1,3"],
            vec![("cpu:0".into(), 0, 5, false), ("cpu:1".into(), 5, 18, true)],
        ),
        (
            &["--devices", "cpu:0", "--split", "1"],
            vec![("cpu:0".into(), 0, 18, true)],
        ),
    ];
    let mut last = serde_json::Value::Null;
    for (i, (args, want)) in steps.iter().enumerate() {
        // Let a few tokens come between re-splits.
        assert!(
            gen.wait_lines(3 + 6 * i),
            "the generation ended early: {:?}",
            gen.seen
        );
        let mut cmd = vec!["reload", "m", "--json"];
        cmd.extend_from_slice(args);
        let r = last_json(&ok(&d, &cmd));
        assert_eq!(ranges(&r["placement"]), *want, "{r}");
        assert_eq!(r["sequences_moved"], 1, "not mid-generation: {r}");
        assert!(r["bytes_moved"].as_u64().unwrap() > 0, "{r}");
        assert!(r["secs"].as_f64().unwrap() > 0.0, "{r}");
        last = r;
    }
    let done = gen.finish();
    assert_eq!(
        split_util::tokens_of(&done),
        reference,
        "re-splits changed the tokens"
    );

    // Memory: the weights of the final plan, nothing else (the generation's KV cache is freed).
    let status = d.status_json();
    for dev in status["devices"].as_array().unwrap() {
        let name = dev["name"].as_str().unwrap();
        let planned: u64 = last["plan"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["device"] == name)
            .map(|s| s["weight_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(
            dev["memory_used_bytes"].as_u64(),
            Some(planned),
            "{name}: {status}"
        );
    }
    // And the model still answers the same.
    assert_eq!(greedy(&d, "m", 8), reference[..8]);
}
