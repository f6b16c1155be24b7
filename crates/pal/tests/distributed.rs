//! Data-parallel training over MPI (`cargo test -p pal --features mpi --test distributed`; needs
//! OpenMPI's `mpirun`): 2 ranks with batch 4 train the adapter one process trains with batch 8
//! (LAL and PLITS, from a manifest and from shards); SIGKILL of one rank ends the whole job with
//! the rank named, and `--resume` then reaches the uninterrupted run's adapter.
#![cfg(feature = "mpi")]

mod common;

use common::{models_present, ok, pal, tone_manifest, tone_model};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

/// `mpirun -np 2 pal ARGS` in `dir` (as root too, and on machines with fewer free cores).
fn mpirun(dir: &Path) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_pal")])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(dir);
    cmd
}

/// Tones, a manifest, a model config for `route`, and a curriculum with `batch` per rank.
fn setup(dir: &Path, route: &str, data: &str, batch: usize, run: &str) -> PathBuf {
    tone_manifest(dir, 11, None);
    tone_model(&dir.join(format!("{route}.toml")), route);
    let path = dir.join(format!("{run}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"model = "{route}.toml"
output = "{run}"
seed = 3
checkpoint_every = 2
[[stages]]
name = "projectors"
{data}
steps = 10
lr = 1e-3
batch_size = {batch}
warmup_steps = 2
"#
        ),
    )
    .unwrap();
    path
}

fn adapter(run: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(run.join("adapter.safetensors"), &Device::Cpu).unwrap()
}

/// Largest relative difference of two adapters' tensors, `|a - b| / |a|` in the Frobenius norm.
fn relative_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    let norm = |t: &Tensor| -> f64 {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    a.iter()
        .map(|(name, x)| norm(&(x - &b[name]).unwrap()) / norm(x).max(1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_with_batch_4_train_what_one_process_with_batch_8_trains() {
    if !models_present() {
        return;
    }
    for (route, data) in [
        ("lal", r#"manifests = [{ path = "train.jsonl" }]"#),
        (
            "plits",
            "shards = [{ path = \"feats\" }]\nshuffle_buffer = 4",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let single = setup(dir, route, data, 8, "single");
        let ranks = setup(dir, route, data, 4, "ranks");
        if data.contains("feats") {
            ok(&pal()
                .args([
                    "encode",
                    "--model",
                    &format!("{route}.toml"),
                    "--manifest",
                    "train.jsonl",
                ])
                .args(["--out", "feats", "--shard-mb", "0.01", "--quiet"])
                .current_dir(dir)
                .output()
                .unwrap());
        }
        // In f32: the comparison is exact to rounding (with bf16 products a rounding flip in
        // either run, where padding to another batch's longest example changed an f32 sum in
        // its last bit, shows at 1e-3).
        ok(&pal()
            .args(["train", "--quiet", "--dtype", "f32", "--config"])
            .arg(&single)
            .current_dir(dir)
            .output()
            .unwrap());
        let out = mpirun(dir)
            .args(["train", "--quiet", "--dtype", "f32", "--config"])
            .arg(&ranks)
            .output()
            .unwrap();
        ok(&out);
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("ranks/train_summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["ranks"], 2, "{route}: ran as two ranks");
        assert_eq!(summary["engine"], "MPI", "{route}: summed by MPI");
        let d = relative_difference(&adapter(&dir.join("single")), &adapter(&dir.join("ranks")));
        assert!(d <= 1e-5, "{route}: adapters differ by {d} (relative)");
    }
}

/// The pid of rank `rank` of the job whose command line mentions `marker`.
fn rank_pid(rank: usize, marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let environ = String::from_utf8_lossy(&environ);
            let is_rank = environ
                .split('\0')
                .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}"));
            (is_rank && cmdline.contains(marker) && !cmdline.starts_with("mpirun")).then_some(pid)
        })
}

#[test]
fn a_killed_rank_ends_the_job_and_resume_reaches_the_same_adapter() {
    if !models_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = r#"manifests = [{ path = "train.jsonl" }]"#;
    let straight = setup(dir, "lal", data, 4, "straight");
    let killed = setup(dir, "lal", data, 4, "killed");
    ok(&mpirun(dir)
        .args(["train", "--quiet", "--config"])
        .arg(&straight)
        .output()
        .unwrap());

    let mut job = mpirun(dir)
        .args(["train", "--quiet", "--config"])
        .arg(&killed)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = dir.join("killed/checkpoints/step-00000004/state.json");
    let start = Instant::now();
    while !checkpoint.exists() {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before a rank was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5)); // polling, not synchronisation
    }
    let marker = killed.to_str().unwrap();
    let pid = rank_pid(1, marker).expect("rank 1 is running");
    let killed_at = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let out = job.wait_with_output().unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_secs(60),
        "the job did not stop within 60 s"
    );
    assert!(!out.status.success());
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("rank 1") || report.contains("rank: 1"),
        "{report}"
    );
    assert!(
        !dir.join("killed/adapter.safetensors").exists(),
        "no final adapter from a killed job"
    );

    ok(&mpirun(dir)
        .args(["train", "--quiet", "--resume", "--config"])
        .arg(&killed)
        .output()
        .unwrap());
    let d = relative_difference(
        &adapter(&dir.join("straight")),
        &adapter(&dir.join("killed")),
    );
    assert!(d <= 1e-5, "resumed adapter differs by {d} (relative)");

    // Another number of ranks cannot continue this run's data order.
    let out = pal()
        .args(["train", "--quiet", "--resume", "--config"])
        .arg(&killed)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 rank(s)"), "{err}");
}
