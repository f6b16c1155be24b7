//! `pal selftest`: on the CPU every check passes (pal's fused f32 ops, training steps and
//! generation against f64) and the JSON report says so; a device this build cannot use is
//! refused by name.

mod common;

use common::{ok, pal};

#[test]
fn selftest_passes_on_the_cpu_and_writes_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("selftest.json");
    let out = pal()
        .args(["selftest", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    ok(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 28, "{} checks", checks.len());
    for c in checks {
        let (error, tolerance) = (
            c["error"].as_f64().unwrap(),
            c["tolerance"].as_f64().unwrap(),
        );
        assert!(error <= tolerance, "{c}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for route in ["Plits", "Lal", "Pal"] {
        assert!(names
            .iter()
            .any(|n| n.starts_with(&format!("{route} training step"))));
    }
    assert!(names.iter().any(|n| n.contains("(gated)")));
}

#[test]
fn an_unknown_device_is_refused_by_name() {
    let out = pal()
        .args(["selftest", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tpu") && stderr.contains("cuda"),
        "{stderr}"
    );
}
