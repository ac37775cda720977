//! The packaged example configuration (packaging/llmd.toml) is accepted by the daemon's own
//! config parser, which rejects unknown keys, both as shipped and with every commented-out
//! example key ("#key = value") enabled; and together they set every key the daemon knows.

use std::path::{Path, PathBuf};

use llmd::config::{parse, Config};

/// The example configuration shipped as /etc/llmd/llmd.toml.
fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/llmd.toml")
}

/// The example with every "#key = value" and "#[section]" line uncommented.
fn with_examples_enabled(text: &str) -> String {
    text.lines()
        .map(|line| {
            let rest = line.strip_prefix('#').unwrap_or(line);
            let is_key = |key: &str| {
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            let is_example = line.starts_with('#')
                && (rest.split_once(" = ").is_some_and(|(key, _)| is_key(key))
                    || rest
                        .strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .map(|r| r.trim_start_matches('[').trim_end_matches(']'))
                        .is_some_and(is_key));
            if is_example {
                rest
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_example_config_is_accepted() {
    let path = example_path();
    let text = std::fs::read_to_string(&path).expect("read packaging/llmd.toml");
    let config = parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    // The values it sets explicitly are the defaults the comments describe.
    assert_eq!(
        config.socket.as_deref(),
        Some(Path::new("/run/llmd/llmd.sock"))
    );
    assert_eq!(config.socket_group.as_deref(), Some("llmd"));
    assert_eq!(config.gpu, llmd::gpu::GpuConfig::default());
    assert_eq!(config.power, llmd::health::power::PowerConfig::default());
    assert_eq!(config.access, None, "as shipped, [access] is an example");
}

#[test]
fn every_commented_example_is_valid_and_every_key_is_documented() {
    let path = example_path();
    let text = std::fs::read_to_string(&path).expect("read packaging/llmd.toml");
    let enabled = with_examples_enabled(&text);
    assert_ne!(
        enabled, text,
        "the example documents optional keys as #key = value lines"
    );
    let config: Config = parse(&enabled, &path).unwrap_or_else(|e| panic!("{e}\n{enabled}"));
    // Every key of the daemon's configuration is set by the example once enabled (so each is
    // documented there). A key added to the daemon must be added to packaging/llmd.toml too.
    let Config {
        socket,
        socket_group,
        log_level,
        devices,
        gpu,
        power,
        access,
        http,
        models_dir,
        prefix_cache_mib,
        models,
        threads,
    } = config;
    assert!(socket.is_some() && socket_group.is_some() && log_level.is_some());
    let access = access.expect("[access] documented");
    assert!(
        !access.manage_users.is_empty() && !access.manage_groups.is_empty(),
        "access.manage_users and access.manage_groups documented"
    );
    assert_eq!(devices.len(), 1);
    assert!(
        devices[0].memory_budget.is_some(),
        "devices.memory_budget documented"
    );
    assert!(gpu.nvml_library.is_some(), "gpu.nvml_library documented");
    assert_eq!(gpu.sample_interval_ms, 2000);
    assert_eq!(power.psu_watts, Some(1200.0));
    assert_eq!(power.system_watts, 150.0);
    assert_eq!(power.transient_factor, 1.3);
    let http = http.expect("[http] documented");
    assert_eq!(http.listen.len(), 1, "http.listen documented");
    assert!(
        http.api_key.is_some() && http.api_key_file.is_some(),
        "http.api_key and http.api_key_file documented"
    );
    assert_eq!(http.max_body_bytes, 4 << 20);
    assert_eq!(http.max_concurrent_requests, 64);
    assert!(models_dir.is_some(), "models_dir documented");
    assert_eq!(prefix_cache_mib, Some(256), "prefix_cache_mib documented");
    assert_eq!(threads, Some(8), "threads (the compute pool) documented");
    // Every [[models]] key is set by the example.
    assert_eq!(models.len(), 1, "one [[models]] example");
    let llmd::config::ModelDecl {
        name,
        path,
        devices,
        split,
        gpu_layers,
        n_cpu_moe,
        ctx,
        threads,
        cache_type_k,
        cache_type_v,
        load,
        keep_alive,
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        presence_penalty,
        frequency_penalty,
        system_prompt,
        chat_template,
        prefix_cache_mib,
    } = models[0].clone();
    assert!(!name.is_empty() && !path.as_os_str().is_empty());
    assert!(!devices.is_empty() && !split.is_empty());
    assert_eq!(load, llmd::config::LoadPolicy::OnDemand);
    assert!(
        [gpu_layers, n_cpu_moe, ctx, threads, top_k]
            .iter()
            .all(Option::is_some)
            && cache_type_k.is_some()
            && cache_type_v.is_some()
            && keep_alive.is_some()
            && [
                temperature,
                top_p,
                min_p,
                repeat_penalty,
                presence_penalty,
                frequency_penalty,
            ]
            .iter()
            .all(Option::is_some)
            && system_prompt.is_some()
            && chat_template.is_some()
            && prefix_cache_mib == Some(512),
        "every [[models]] key documented"
    );
}

#[test]
fn a_misspelled_key_in_the_example_would_be_rejected() {
    let path = example_path();
    let text = std::fs::read_to_string(&path).expect("read packaging/llmd.toml");
    let broken = text.replacen("transient_factor = 1.3", "transient_factr = 1.3", 1);
    let error = parse(&broken, &path).expect_err("unknown key").to_string();
    assert!(error.contains("transient_factr"), "{error}");
}
