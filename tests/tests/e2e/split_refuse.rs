//! A re-split (or a load) that cannot fit is refused up front with a clear error, and the model
//! keeps serving: a generation running meanwhile produces its undisturbed tokens.

use crate::split_util;

use split_util::{daemon_with_devices, gemma, greedy, load, ranges, Background};

const N: u32 = 32;

#[test]
fn resplit_that_does_not_fit_is_refused_while_generation_continues() {
    let Some(file) = gemma() else { return };
    // cpu:1 is far too small for Gemma's output layer (~200 MiB with the tied embedding).
    let d = daemon_with_devices(&["1GiB", "64MiB"]);
    let loaded = load(&d, &file, "m", &[]);
    let reference = greedy(&d, "m", N);

    let mut gen = Background::start(&d, "m", N);
    assert!(gen.wait_lines(3), "the generation ended early");
    let out = d.llmctl(&["reload", "m", "--devices", "cpu:0,cpu:1", "--split", "1,1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("re-split refused")
            && err.contains("keeps serving")
            && err.contains("cpu:1 needs"),
        "{err}"
    );
    let done = gen.finish();
    assert_eq!(split_util::tokens_of(&done), reference);

    // Placement unchanged; a load onto the small device is refused before allocating anything.
    let list = split_util::last_json(&split_util::ok(&d, &["list", "--json"]))["models"][0].clone();
    assert_eq!(ranges(&list["placement"]), ranges(&loaded["placement"]));
    let used_before = d.status_json()["devices"][1]["memory_used_bytes"].clone();
    let out = d.llmctl(&[
        "load",
        file.to_str().unwrap(),
        "--name",
        "small",
        "--devices",
        "cpu:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit") && err.contains("cpu:1 needs"),
        "{err}"
    );
    assert_eq!(
        d.status_json()["devices"][1]["memory_used_bytes"],
        used_before
    );
    assert_eq!(used_before, 0);
}
