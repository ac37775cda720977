//! Issue 15, always-on: models declared in the config (`[[models]]`) are loaded after READY in
//! the background and again after a restart, a missing file is reported while the others serve,
//! SIGHUP reconciles live (adds, re-splits under a running generation with unchanged tokens,
//! replaces a model whose file changed, removes, leaves the rest untouched), on-demand models
//! load at their first request and unload after `keep_alive`, idle on-demand models are evicted
//! least recently used first to make room, and per-model request defaults apply. Every wait is
//! bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::split_util::{gemma, greedy, last_json, ok, tail, tokens_of, Background};
use llmd_testkit::e2e::{tiny_model, Daemon};
use serde_json::Value;

/// Upper bound for declared models to reach a state (loads of tiny models take milliseconds,
/// Gemma 270M about a second; the machine may be busy).
const SETTLE: Duration = Duration::from_secs(60);

/// A tiny llama file of its own in `dir/<name>/tiny.gguf`.
fn tiny(dir: &Path, name: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("model dir");
    tiny_model(&sub, "q8_0", None)
}

/// A `[[models]]` entry.
fn entry(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "\n[[models]]\nname = \"{name}\"\npath = \"{}\"\nthreads = 1\n{extra}",
        path.display()
    )
}

/// The `declared` entry called `name` in a status reply.
fn declared<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["declared"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not declared in {}", status["declared"]))
}

/// The names of the resident models in a status reply.
fn resident(status: &Value) -> Vec<String> {
    status["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Polls `status --json` until `pred` holds (at most [`SETTLE`]); returns that status.
fn status_when(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = d.status_json();
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what} within {SETTLE:?}; last declared: {}, models: {:?}\n\
             daemon log:\n{}",
            status["declared"],
            resident(&status),
            tail(&d.stderr())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether every name is declared and resident.
fn all_resident(status: &Value, names: &[&str]) -> bool {
    names.iter().all(|n| {
        declared(status, n)["state"] == "resident" && resident(status).iter().any(|r| r == n)
    })
}

/// A short generation from `model`, asserting success; its token ids.
fn generate(d: &Daemon, model: &str, extra: &[&str]) -> Vec<u64> {
    let mut args = vec!["generate", model, "Hello", "--raw", "-n", "8", "--json"];
    args.extend_from_slice(extra);
    tokens_of(&last_json(&ok(d, &args)))
}

#[test]
fn declared_models_load_after_ready_and_again_after_a_restart_a_missing_one_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = tiny(dir.path(), "a");
    let b = tiny(dir.path(), "b");
    let missing = dir.path().join("nowhere.gguf");
    let config = format!(
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n{}{}{}",
        entry("a", &a, ""),
        entry("gone", &missing, ""),
        entry("b", &b, "")
    );
    for run in ["start", "restart"] {
        let mut d = Daemon::builder().config(&config).start();
        // READY comes first: nothing was loaded before it.
        let ready = d.notify.seen.last().cloned().unwrap_or_default();
        assert!(ready.contains("STATUS=0 models resident"), "{run}: {ready}");
        let status = status_when(&d, "a and b resident, gone failed", |s| {
            all_resident(s, &["a", "b"]) && declared(s, "gone")["state"].get("failed").is_some()
        });
        let why = declared(&status, "gone")["state"]["failed"]["reason"]
            .as_str()
            .expect("reason")
            .to_owned();
        assert!(why.contains("nowhere.gguf"), "{run}: {why}");
        assert_eq!(resident(&status), ["a", "b"], "{run}");
        // The others serve; the missing one is refused with the reason.
        assert_eq!(generate(&d, "a", &[]).len(), 8);
        let out = d.llmctl(&["generate", "gone", "Hi", "--raw", "-n", "2"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nowhere.gguf"), "{run}: {err}");
        // STATUS= and doctor say so too.
        let line = d
            .notify
            .wait_for(llmd_testkit::e2e::NOTIFY_TIMEOUT, |l| {
                l.starts_with("STATUS=") && l.contains("declared 2/3 resident")
            })
            .unwrap_or_else(|| panic!("{run}: no STATUS= progress: {:?}", d.notify.seen));
        assert!(line.contains("1 failed: gone"), "{run}: {line}");
        let doctor = d.llmctl(&["doctor"]);
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert_eq!(doctor.status.code(), Some(2), "{run}: {report}");
        assert!(
            report.contains("FAIL  model") && report.contains("model gone: declared in the config"),
            "{run}: {report}"
        );
        let text = ok(&d, &["status"]);
        assert!(text.contains("declared (config [[models]]):"), "{text}");
        assert!(text.contains("FAILED: "), "{text}");
        // Unloaded by hand, a declared model says so (the restart loads it again).
        ok(&d, &["unload", "b"]);
        let status = d.status_json();
        assert_eq!(declared(&status, "b")["state"], "not_loaded", "{run}");
        assert!(
            declared(&status, "b")["note"]
                .as_str()
                .is_some_and(|n| n.contains("by hand")),
            "{run}: {}",
            status["declared"]
        );
        llmd_testkit::e2e::signal(d.pid(), "TERM");
        assert!(d.wait(Duration::from_secs(15)).is_some(), "{run}: no exit");
    }
}

#[test]
fn sighup_adds_resplits_replaces_and_removes_live() {
    let Some(file) = gemma() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let keep = tiny(dir.path(), "keep");
    let gone = tiny(dir.path(), "gone");
    let swap_old = tiny(dir.path(), "swap_old");
    let swap_new = dir.path().join("swap_new.gguf");
    std::fs::copy(&swap_old, &swap_new).expect("copy");
    let added = tiny(dir.path(), "added");
    let devices = "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n\
                   [[devices]]\nid = \"cpu:1\"\nmemory_budget = \"1GiB\"\n";
    let m = |split: &str| {
        format!(
            "\n[[models]]\nname = \"m\"\npath = \"{}\"\nthreads = 2\n\
             devices = [\"cpu:0\", \"cpu:1\"]\nsplit = [{split}]\n",
            file.display()
        )
    };
    let before = format!(
        "{devices}{}{}{}{}",
        m("1, 1"),
        entry("keep", &keep, ""),
        entry("gone", &gone, ""),
        entry("swap", &swap_old, "")
    );
    let mut d = Daemon::builder().config(&before).start();
    status_when(&d, "every model resident", |s| {
        all_resident(s, &["m", "keep", "gone", "swap"])
    });
    const N: u32 = 128;
    let reference = greedy(&d, "m", N);
    let mut gen = Background::start(&d, "m", N);
    assert!(
        gen.wait_lines(3),
        "the generation ended early: {:?}",
        gen.seen
    );

    let after = format!(
        "{devices}{}{}{}{}",
        m("3, 1"),
        entry("keep", &keep, ""),
        entry("swap", &swap_new, ""),
        entry("added", &added, "")
    );
    std::fs::write(&d.config, after).expect("rewrite the config");
    llmd_testkit::e2e::signal(d.pid(), "HUP");
    d.notify.expect_line("RELOADING=1");
    d.notify.expect_line("READY=1");
    let swap_path = swap_new.display().to_string();
    let status = status_when(&d, "the new config applied", |s| {
        let layers = s["model_layers"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == "m"))
            .map(|m| m["layers"].clone());
        all_resident(s, &["m", "keep", "swap", "added"])
            && !resident(s).iter().any(|r| r == "gone")
            && s["models"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|m| m["name"] == "swap" && m["path"] == swap_path.as_str())
            })
            && layers.is_some_and(|l| l[0]["layers"] == 15 && l[1]["layers"] == 3)
    });
    assert!(
        status["declared"].as_array().is_some_and(|a| a.len() == 4),
        "{}",
        status["declared"]
    );
    let done = gen.finish();
    assert_eq!(
        tokens_of(&done),
        reference,
        "the live re-split changed the tokens"
    );
    // `keep` was left alone: loaded once, at start.
    let log = d.stderr();
    let loads_of = |name: &str| {
        log.lines()
            .filter(|l| l.contains("model loaded") && l.contains(&format!("model={name} ")))
            .count()
    };
    assert_eq!(loads_of("keep"), 1, "{}", tail(&log));
    assert_eq!(loads_of("swap"), 2, "{}", tail(&log));
    let resplit = log
        .lines()
        .find(|l| l.contains("declared model re-split"))
        .unwrap_or_else(|| panic!("no re-split in the log:\n{}", tail(&log)));
    assert!(
        resplit.contains("sequences=1"),
        "not mid-generation: {resplit}"
    );
    // A model loaded by hand is not the config's: a reload leaves it alone.
    let hand = tiny(dir.path(), "hand");
    ok(
        &d,
        &["load", hand.to_str().expect("utf-8"), "--name", "hand"],
    );
    llmd_testkit::e2e::signal(d.pid(), "HUP");
    d.notify.expect_line("READY=1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(resident(&d.status_json()).iter().any(|r| r == "hand"));
}

#[test]
fn on_demand_models_load_at_first_request_and_unload_after_keep_alive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lazy = tiny(dir.path(), "lazy");
    let config = format!(
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n{}",
        entry("lazy", &lazy, "load = \"on_demand\"\nkeep_alive = \"2s\"\n")
    );
    let d = Daemon::builder().config(&config).start();
    let status = status_when(&d, "lazy declared", |s| {
        s["declared"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(declared(&status, "lazy")["state"], "not_loaded");
    assert!(resident(&status).is_empty());
    // Nothing resident: `list --json` still prints a result that parses.
    let listed: Value = serde_json::from_str(ok(&d, &["list", "--json"]).trim()).expect("JSON");
    assert_eq!(listed, serde_json::json!({ "models": [] }));
    // The first request loads it (its stream carries the load's progress) and is answered.
    assert_eq!(generate(&d, "lazy", &[]).len(), 8);
    let status = d.status_json();
    assert_eq!(declared(&status, "lazy")["state"], "resident", "{status}");
    // Requests keep it; after 2 s without any, it goes.
    let out = ok(&d, &["tokenize", "lazy", "Hi", "--json"]);
    assert!(!out.is_empty());
    let started = Instant::now();
    let status = status_when(&d, "lazy unloaded by its keep-alive", |s| {
        declared(s, "lazy")["state"] == "not_loaded"
    });
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "unloaded too early: {:?}",
        started.elapsed()
    );
    assert!(resident(&status).is_empty(), "{status}");
    let note = declared(&status, "lazy")["note"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(note.contains("keep_alive"), "{note}");
    assert_eq!(status["devices"][0]["memory_used_bytes"], 0, "{status}");
    // And the next request (a tokenize, on the raw protocol) loads it again, its stream saying
    // so with the load's progress before the answer.
    use llmd_shared::frame::{read_frame, write_frame};
    use llmd_shared::{Event, Reply, Request, Response, TokenizeRequest};
    let mut s = llmd_testkit::e2e::handshaken(&d.socket);
    let ask = Request::Tokenize(TokenizeRequest {
        model: "lazy".into(),
        text: "Hello".into(),
        add_special: true,
        parse_special: false,
    });
    write_frame(&mut s, &ask).expect("send");
    let mut progress = Vec::new();
    let last = loop {
        match read_frame::<_, Response>(&mut s).expect("a response") {
            Response::Event(Event::Progress(p)) => progress.push((p.done, p.total)),
            Response::Event(other) => panic!("unexpected event {other:?}"),
            last => break last,
        }
    };
    assert!(
        matches!(&last, Response::Reply(Reply::Tokenize(r)) if !r.tokens.is_empty()),
        "{last:?}"
    );
    let &(done, total) = progress.last().expect("progress events before the answer");
    assert!(total > 0 && done == total, "{progress:?}");
    assert_eq!(declared(&d.status_json(), "lazy")["state"], "resident");
}

#[test]
fn idle_on_demand_models_are_evicted_least_recently_used_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = ["x", "y", "z"]
        .iter()
        .map(|n| tiny(dir.path(), n))
        .collect();
    // What one model needs to load (weights, a full-context KV cache, scratch) and keeps
    // (weights): the budget holds two resident and room to load only while one is.
    let probe = Daemon::start();
    let plan = last_json(&ok(
        &probe,
        &[
            "plan",
            files[0].to_str().expect("utf-8"),
            "--ctx",
            "256",
            "--json",
        ],
    ));
    drop(probe);
    let need = plan["devices"][0]["need_bytes"].as_u64().expect("need");
    let weights: u64 = plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["weight_bytes"].as_u64().expect("weight bytes"))
        .sum();
    let budget = need + weights + weights / 2;
    let mut config = format!("[[devices]]\nid = \"cpu:0\"\nmemory_budget = {budget}\n");
    for (name, file) in ["x", "y", "z"].iter().zip(&files) {
        config.push_str(&entry(name, file, "load = \"on_demand\"\nctx = 256\n"));
    }
    let d = Daemon::builder().config(&config).start();
    generate(&d, "x", &[]);
    generate(&d, "y", &[]);
    assert_eq!(resident(&d.status_json()), ["x", "y"]);
    // z does not fit beside both: x, used least recently, makes room.
    generate(&d, "z", &[]);
    let status = d.status_json();
    assert_eq!(resident(&status), ["y", "z"], "{}", status["declared"]);
    assert_eq!(declared(&status, "x")["state"], "not_loaded");
    let note = declared(&status, "x")["note"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(note.contains("evicted") && note.contains("\"z\""), "{note}");
    let text = ok(&d, &["status"]);
    assert!(text.contains("evicted"), "{text}");
}

#[test]
fn per_model_defaults_apply_unless_the_request_sets_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = tiny(dir.path(), "t");
    let config = format!(
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n{}",
        entry("t", &file, "temperature = 0\n")
    );
    let d = Daemon::builder().config(&config).start();
    status_when(&d, "t resident", |s| all_resident(s, &["t"]));
    // Greedy by the config's default, whatever the seed; the same as asking for it.
    let a = generate(&d, "t", &["--seed", "1"]);
    let b = generate(&d, "t", &["--seed", "2"]);
    let greedy = generate(&d, "t", &["--temperature", "0"]);
    assert_eq!(a, b);
    assert_eq!(a, greedy);
    // A request's own temperature wins: with temperature 2 the seeds differ somewhere.
    let hot: Vec<Vec<u64>> = (1..=4)
        .map(|seed| {
            generate(
                &d,
                "t",
                &["--temperature", "2", "--seed", &seed.to_string()],
            )
        })
        .collect();
    assert!(hot.iter().any(|t| *t != a), "{hot:?} vs {a:?}");
}

/// A copy of `file` whose chat template is blanked (spaces of the same length, which the
/// daemon treats as none): GGUF stores it as the key, a u32 type (8, string), a u64 length and
/// the bytes.
fn without_chat_template(file: &Path) -> PathBuf {
    let mut bytes = std::fs::read(file).expect("read the model");
    let key = b"tokenizer.chat_template";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the synthetic model has a chat template");
    let len_at = at + key.len() + 4;
    let len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().expect("8 bytes")) as usize;
    let start = len_at + 8;
    bytes[start..start + len].fill(b' ');
    let out = file.with_file_name("no-template.gguf");
    std::fs::write(&out, bytes).expect("write the copy");
    out
}

#[test]
fn system_prompt_and_chat_template_from_the_config_and_the_fallback_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = without_chat_template(&tiny(dir.path(), "t"));
    let template =
        "chat_template = \"{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}\"\n";
    let config = format!(
        "[[devices]]\nid = \"cpu:0\"\nmemory_budget = \"1GiB\"\n{}{}{}",
        entry("bare", &file, ""),
        entry("templated", &file, template),
        entry(
            "system",
            &file,
            &format!("{template}system_prompt = \"Answer in one short sentence, please.\"\n")
        )
    );
    let d = Daemon::builder().config(&config).start();
    let status = status_when(&d, "all resident", |s| {
        all_resident(s, &["bare", "templated", "system"])
    });
    let warning_of = |name: &str| {
        status["models"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == name))
            .map(|m| m["template_warning"].clone())
            .expect("listed")
    };
    // The tiny model's file has no chat template: status and a chat reply say so.
    let warning = warning_of("bare");
    assert!(
        warning
            .as_str()
            .is_some_and(|w| w.contains("no chat template") && w.contains("--raw")),
        "{warning}"
    );
    assert_eq!(warning_of("templated"), Value::Null);
    let chat = |model: &str| last_json(&ok(&d, &["generate", model, "Hi", "-n", "2", "--json"]));
    let bare = chat("bare");
    assert!(
        bare["warning"]
            .as_str()
            .is_some_and(|w| w.contains("fallback")),
        "{bare}"
    );
    let templated = chat("templated");
    assert_eq!(templated["warning"], Value::Null, "{templated}");
    // A raw prompt uses no template: no warning.
    let raw = last_json(&ok(
        &d,
        &["generate", "bare", "Hi", "--raw", "-n", "2", "--json"],
    ));
    assert_eq!(raw["warning"], Value::Null, "{raw}");
    // The system prompt is put first: the same chat has more prompt tokens.
    let with_system = chat("system");
    let more = with_system["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    let fewer = templated["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(more > fewer + 4, "{more} vs {fewer}");
    let human = ok(&d, &["status"]);
    assert!(
        human.contains("warning: the model's file has no chat template"),
        "{human}"
    );
}

/// Issue 15: `load` takes `--gpu-layers` as `plan` does; the planner judges it (here, on CPU
/// devices only, it is refused naming the flag, not ignored).
#[test]
fn load_takes_gpu_layers_like_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = tiny(dir.path(), "t");
    let d = Daemon::start();
    let out = d.llmctl(&[
        "load",
        file.to_str().expect("utf-8"),
        "--name",
        "t",
        "--gpu-layers",
        "1",
    ]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gpu-layers") && err.contains("all CPU devices"),
        "{err}"
    );
    let help = String::from_utf8_lossy(&d.llmctl(&["load", "--help"]).stdout).into_owned();
    assert!(help.contains("--gpu-layers"), "{help}");
    assert!(help.contains("every usable GPU"), "{help}");
    // Without it the same load works.
    ok(&d, &["load", file.to_str().expect("utf-8"), "--name", "t"]);
}
