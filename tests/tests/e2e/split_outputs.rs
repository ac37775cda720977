//! Pipeline execution over several CPU devices: Gemma 3 270M split 1,1 and 3,1 over two devices
//! and 1,1,1 over three gives exactly the single-device greedy tokens, placed as llama.cpp's
//! `--tensor-split` would place them; `load --replace` swaps a model atomically and reports time
//! and bytes.

use crate::split_util;

use split_util::{daemon_with_devices, gemma, greedy, load, ok, ranges, Range};

/// Tokens per generation (Gemma decodes 10-20 tokens/s on a loaded 2-core machine).
const N: u32 = 32;

#[test]
fn split_outputs_equal_the_single_device_output() {
    let Some(file) = gemma() else { return };
    let d = daemon_with_devices(&["1GiB", "1GiB", "1GiB"]);

    let one = load(&d, &file, "one", &[]);
    assert_eq!(
        ranges(&one["placement"]),
        vec![("cpu:0".into(), 0, 18, true)]
    );
    let reference = greedy(&d, "one", N);
    assert_eq!(reference.len(), N as usize);
    ok(&d, &["unload", "one"]);

    // 18 layers + output over two devices at 1,1: layer il goes to cpu:0 while il/19 < 1/2.
    let cases: [(&str, &str, &str, Vec<Range>); 3] = [
        (
            "even",
            "cpu:0,cpu:1",
            "1,1",
            vec![
                ("cpu:0".into(), 0, 10, false),
                ("cpu:1".into(), 10, 18, true),
            ],
        ),
        (
            "lopsided",
            "cpu:0,cpu:1",
            "3,1",
            vec![
                ("cpu:0".into(), 0, 15, false),
                ("cpu:1".into(), 15, 18, true),
            ],
        ),
        (
            "three",
            "cpu:0,cpu:1,cpu:2",
            "1,1,1",
            vec![
                ("cpu:0".into(), 0, 7, false),
                ("cpu:1".into(), 7, 13, false),
                ("cpu:2".into(), 13, 18, true),
            ],
        ),
    ];
    for (name, devices, split, want) in cases {
        let r = load(&d, &file, name, &["--devices", devices, "--split", split]);
        assert_eq!(ranges(&r["placement"]), want, "{name}");
        let tokens = greedy(&d, name, N);
        assert_eq!(tokens, reference, "{name} ({split} over {devices}) differs");
        // A new context alone keeps every layer where it is.
        let r = split_util::last_json(&ok(&d, &["reload", name, "--ctx", "1024", "--json"]));
        assert_eq!(
            (r["ctx"].as_u64(), r["layers_moved"].as_u64()),
            (Some(1024), Some(0)),
            "{r}"
        );
        assert_eq!(ranges(&r["placement"]), want, "{name}");
        ok(&d, &["unload", name]);
    }
}

#[test]
fn load_replace_swaps_atomically_and_reports_time_and_bytes() {
    let Some(file) = gemma() else { return };
    let d = daemon_with_devices(&["1GiB", "1GiB"]);
    let first = load(&d, &file, "m", &[]);
    assert_eq!(first["replaced"], false);
    let reference = greedy(&d, "m", 8);

    // Replace it with the same file split over both devices.
    let r = load(
        &d,
        &file,
        "m",
        &["--devices", "cpu:0,cpu:1", "--split", "1,1", "--replace"],
    );
    assert_eq!(r["replaced"], true, "{r}");
    assert!(r["load_secs"].as_f64().unwrap() > 0.0, "{r}");
    let weights: u64 = r["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["weight_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(r["bytes_loaded"].as_u64(), Some(weights), "{r}");
    assert_eq!(weights, first["bytes_loaded"].as_u64().unwrap());
    assert_eq!(greedy(&d, "m", 8), reference);

    // The old copy's memory went back: the devices hold exactly the new placement.
    let status = d.status_json();
    for dev in status["devices"].as_array().unwrap() {
        let name = dev["name"].as_str().unwrap();
        let want: u64 = r["placement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["device"] == name)
            .map(|s| s["weight_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(
            dev["memory_used_bytes"].as_u64(),
            Some(want),
            "{name}: {status}"
        );
    }
}
