//! What every benchmark report shares: medians, and the `PREFIX.json` / `PREFIX.md` files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

/// `PREFIX.ext`: the prefix may contain dots (`modes-llama-3.2-1b`), which `with_extension`
/// would cut.
pub fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The CPU's model name and the flags that decide pal's kernels (`avx2`, `avx512f`,
/// `avx512_bf16`, `amx_bf16`...), from `/proc/cpuinfo`: every timing report names its machine.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|g| g == *f))
    .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores available; {}", have.join(", "))
}

/// The median of `v` (the upper one for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over `repeats` runs.
pub fn time_median(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Writes `PREFIX.json` (the report) and `PREFIX.md`, creating the folder. When the earlier
/// figures of this report are kept beside it (`PREFIX-history.md`), the markdown links them.
pub fn write(prefix: &Path, report: &impl Serialize, markdown: &str) -> anyhow::Result<()> {
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = with_suffix(prefix, "json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = with_suffix(prefix, "md");
    let mut markdown = markdown.to_string();
    let mut history = prefix.as_os_str().to_owned();
    history.push("-history.md");
    let history = PathBuf::from(history);
    if let Some(name) = history.file_name().filter(|_| history.exists()) {
        let name = name.to_string_lossy();
        markdown.push_str(&format!("\nEarlier figures, dated: [{name}]({name}).\n"));
    }
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

/// Runs `cmd` and parses the last line of its stdout as JSON: how a benchmark reads a child
/// process (a measurement of its own, or a reference script).
pub fn json_child<T: serde::de::DeserializeOwned>(
    mut cmd: Command,
    what: &str,
) -> anyhow::Result<T> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("parsing {what}'s result: {last}"))
}

/// The repository's `scripts/NAME` (reference scripts run beside pal).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}
