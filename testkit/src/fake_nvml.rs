//! The fake NVML: compiles the fake `libnvidia-ml.so.1` (`testkit/fake-nvml/fake_nvml.c`) with
//! the system C compiler and gives each test its own copy with its own readings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serializes builds of the same variant inside one test binary.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The fake library's source.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fake-nvml/fake_nvml.c")
}

/// Builds (once per test process) the fake library variant with the given compiler flags, under
/// the system's temporary directory; returns its path.
pub fn build(variant: &str, flags: &[&str]) -> PathBuf {
    let _guard = BUILD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = std::env::temp_dir()
        .join("llmd-fake-nvml")
        .join(format!("{variant}-{}", std::process::id()));
    let library = dir.join("libnvidia-ml.so.1");
    if library.exists() {
        return library;
    }
    std::fs::create_dir_all(&dir).expect("create fake NVML build dir");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&library)
        .arg(source())
        .output()
        .unwrap_or_else(|error| panic!("running {compiler} to build the fake NVML: {error}"));
    assert!(
        output.status.success(),
        "building the fake NVML failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

/// One test's copy of the fake library, with `fake-nvml.conf` beside it.
pub struct FakeNvml {
    /// Holds the copy and its config.
    pub dir: tempfile::TempDir,
    /// The library to load.
    pub library: PathBuf,
}

impl FakeNvml {
    /// Copies the variant's library into a new directory and writes `config` beside it.
    pub fn new(variant: &str, flags: &[&str], config: &str) -> Self {
        let built = build(variant, flags);
        let dir = tempfile::tempdir().expect("temp dir");
        let library = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(&built, &library).expect("copy fake NVML");
        let fake = Self { dir, library };
        fake.set_config(config);
        fake
    }

    /// The standard fake library.
    pub fn standard(config: &str) -> Self {
        Self::new("standard", &[], config)
    }

    /// Replaces the readings atomically (the fake re-reads them at the start of each sample).
    pub fn set_config(&self, config: &str) {
        let staging = self.dir.path().join("fake-nvml.conf.new");
        std::fs::write(&staging, config).expect("write fake NVML config");
        std::fs::rename(&staging, self.dir.path().join("fake-nvml.conf")).expect("install config");
    }
}

/// Two RTX 3090s with problems: GPU 0 runs at x8, hot and throttling, holds 1 GiB for `pid`;
/// GPU 1 is idle at PCIe gen 1, has no fan reading. Both have NVLink hardware but no active
/// link, and P2P is unsupported between them (status 2: GPU not supported).
pub fn troubled_pair(pid: u32) -> String {
    format!(
        "driver_version 550.54.14
cuda_version 12040
count 2
gpu0.name NVIDIA GeForce RTX 3090
gpu0.uuid GPU-00000000-aaaa-bbbb-cccc-000000000000
gpu0.bus_id 00000000:01:00.0
gpu0.mem_total 25769803776
gpu0.mem_used 12884901888
gpu0.mem_free 12884901888
gpu0.processes 4242:5000,{pid}:1073741824
gpu0.util_gpu 97
gpu0.util_mem 60
gpu0.temp 86
gpu0.temp_slowdown 90
gpu0.temp_shutdown 98
gpu0.fan 75
gpu0.power_mw 345500
gpu0.limit_mw 350000
gpu0.limit_default_mw 350000
gpu0.limit_min_mw 100000
gpu0.limit_max_mw 400000
gpu0.energy_mj 123456789
gpu0.clock_sm 1695
gpu0.clock_mem 9751
gpu0.throttle 0x24
gpu0.pcie_gen 4
gpu0.pcie_gen_max 4
gpu0.pcie_width 8
gpu0.pcie_width_max 16
gpu0.pcie_tx_kib 1024
gpu0.pcie_rx_kib 2048
gpu0.nvlink 4:0
gpu1.name NVIDIA GeForce RTX 3090
gpu1.uuid GPU-11111111-aaaa-bbbb-cccc-111111111111
gpu1.bus_id 00000000:02:00.0
gpu1.mem_total 25769803776
gpu1.mem_used 1073741824
gpu1.mem_free 24696061952
gpu1.processes NS
gpu1.util_gpu 0
gpu1.util_mem 0
gpu1.temp 41
gpu1.temp_slowdown 90
gpu1.temp_shutdown 98
gpu1.fan NS
gpu1.power_mw 30000
gpu1.limit_mw 350000
gpu1.limit_default_mw 350000
gpu1.limit_min_mw 100000
gpu1.limit_max_mw 400000
gpu1.energy_mj 5000000
gpu1.clock_sm 210
gpu1.clock_mem 405
gpu1.throttle 0x1
gpu1.pcie_gen 1
gpu1.pcie_gen_max 4
gpu1.pcie_width 16
gpu1.pcie_width_max 16
gpu1.pcie_tx_kib 0
gpu1.pcie_rx_kib 0
gpu1.nvlink 4:0
p2p.0.1 2
p2p_nvlink.0.1 5
"
    )
}

/// Two healthy, NVLink-bridged RTX 3090s at x16, cool, not throttled, P2P available.
pub fn healthy_pair() -> String {
    let mut config = String::from("driver_version 550.54.14\ncuda_version 12040\ncount 2\n");
    for gpu in 0..2 {
        config.push_str(&format!(
            "gpu{gpu}.name NVIDIA GeForce RTX 3090
gpu{gpu}.uuid GPU-{gpu}{gpu}{gpu}{gpu}
gpu{gpu}.bus_id 00000000:0{gpu}:00.0
gpu{gpu}.mem_total 25769803776
gpu{gpu}.mem_used 1073741824
gpu{gpu}.mem_free 24696061952
gpu{gpu}.processes NS
gpu{gpu}.util_gpu 80
gpu{gpu}.util_mem 40
gpu{gpu}.temp 55
gpu{gpu}.temp_slowdown 90
gpu{gpu}.temp_shutdown 98
gpu{gpu}.fan 50
gpu{gpu}.power_mw 250000
gpu{gpu}.limit_mw 350000
gpu{gpu}.limit_default_mw 350000
gpu{gpu}.limit_min_mw 100000
gpu{gpu}.limit_max_mw 400000
gpu{gpu}.energy_mj 1000
gpu{gpu}.clock_sm 1800
gpu{gpu}.clock_mem 9751
gpu{gpu}.throttle 0
gpu{gpu}.pcie_gen 4
gpu{gpu}.pcie_gen_max 4
gpu{gpu}.pcie_width 16
gpu{gpu}.pcie_width_max 16
gpu{gpu}.pcie_tx_kib 100
gpu{gpu}.pcie_rx_kib 100
gpu{gpu}.nvlink 4:4
"
        ));
    }
    config.push_str("p2p.0.1 0\np2p_nvlink.0.1 0\n");
    config
}
