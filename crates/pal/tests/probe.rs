//! `pal probe` end to end on an external encoder's shards (random features written by
//! scripts/write_shards.py) with the real SmolLM2-135M: a grid of modes x seeds plus a LAL-start
//! sweep runs, aggregates, and a probe killed with SIGKILL continues without redoing the cells it
//! had finished, while a changed curriculum runs them all again.

mod common;

use common::{models_present, ok, pal, python, repo};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn setup(dir: &Path, python: &str) {
    let script = repo().join("scripts/write_shards.py");
    for (out, records) in [("train", "24"), ("test", "6")] {
        let status = std::process::Command::new(python)
            .arg(&script)
            .args([
                "--records",
                records,
                "--random-features",
                "32",
                "--tokens",
                "6",
            ])
            .args([
                "--encoder-id",
                "random-32",
                "--name",
                "random",
                "--out",
                out,
            ])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::write(
        dir.join("curriculum.toml"),
        "model = \"unused.toml\"\noutput = \"unused\"\n[[stages]]\nname = \"p\"\nshards = [{ path = \"train\" }]\nsteps = 2\nlr = 1e-3\nbatch_size = 4\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("suite.toml"),
        r#"output = "out"
curriculum = "curriculum.toml"
llm = "asset:smollm2-135m-instruct"
seeds = [0, 1]
modes = ["plits", "lal"]
lal_start = 20
[[splits]]
name = "digits"
shards = "test"
[[encoders]]
name = "random"
kind = "shards"
path = "train"
[sweeps]
encoder = "random"
lal_starts = [26]
"#,
    )
    .unwrap();
}

fn finished(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut found = vec![];
    let mut stack = vec![dir.join("out")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "cell.json") {
                found.push((
                    p.display().to_string(),
                    e.metadata().unwrap().modified().unwrap(),
                ));
            }
        }
    }
    found.sort();
    found
}

/// Runs `pal probe` on the suite in `dir` until it finishes, and requires success.
fn probe_to_the_end(dir: &Path) {
    let out = pal()
        .args(["probe", "--quiet", "--suite", "suite.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    ok(&out);
}

#[test]
fn a_grid_on_external_shards_runs_aggregates_and_resumes_after_a_kill() {
    if !models_present() {
        return;
    }
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, &python);
    let mut child = pal()
        .args(["probe", "--quiet", "--suite", "suite.toml"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while finished(dir).len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the probe ended before it was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no cell finished"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling, not synchronisation
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = finished(dir);
    assert!(before.len() < 6, "killed before the end");

    probe_to_the_end(dir);
    let after = finished(dir);
    assert_eq!(
        after.len(),
        6,
        "2 modes x 2 seeds + 1 sweep value x 2 seeds"
    );
    for cell in &before {
        assert!(after.contains(cell), "{} was redone", cell.0);
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/probe.json")).unwrap())
            .unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["mode"], "plits");
    assert_eq!(rows[1]["seeds"], serde_json::json!([0, 1]));
    assert_eq!(rows[1]["accuracy"]["digits"]["n"], 2);
    // LAL against PLITS seed by seed: one difference per seed (2), however many items; the
    // sweep row has no PLITS of its own.
    assert_eq!(rows[1]["against_plits"]["digits"]["difference"]["n"], 2);
    assert!(rows[2]["against_plits"].as_object().unwrap().is_empty());
    let png = std::fs::metadata(dir.join("out/probe.png")).unwrap();
    assert!(png.len() > 1000, "the plot is drawn");
    let md = std::fs::read_to_string(dir.join("out/probe.md")).unwrap();
    assert!(md.contains("| random LAL from 26 | LAL | 2 |"), "{md}");

    // Another curriculum is another experiment: no finished cell is reused.
    let curriculum = std::fs::read_to_string(dir.join("curriculum.toml")).unwrap();
    std::fs::write(
        dir.join("curriculum.toml"),
        curriculum.replace("lr = 1e-3", "lr = 2e-3"),
    )
    .unwrap();
    probe_to_the_end(dir);
    let rerun = finished(dir);
    assert_eq!(rerun.len(), 6);
    for cell in &after {
        assert!(
            !rerun.contains(cell),
            "{} was reused after the curriculum changed",
            cell.0
        );
    }
}
