//! `memout experiment interference --quick`: its outputs are there and have the shape seed 004
//! describes. 16 busy dummies on this host's CPUs leave the target a fraction of its
//! throughput alone, nice −5 gets it more than nice 0, and one light dummy barely matters.
//! The plot has its CSV, and the manifest names the machine.

use memout_test_support::{Piece, require_all};
use std::collections::HashMap;
use std::process::Command;

#[test]
fn the_quick_interference_experiment_has_seed_004s_shape() {
    if !require_all(&[Piece::Kvm, Piece::Root], "experiment_interference") {
        return;
    }
    let out = std::env::temp_dir().join(format!("memout-exp-intf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_memout"))
        .args(["experiment", "interference", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("running memout");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|l| head.iter().copied().zip(l.split(',')).collect())
        .collect();
    assert_eq!(
        rows.len(),
        2 * 6 * 2,
        "2 loads × 6 dummy counts × 2 nice values"
    );
    let rate = |load: &str, nice: &str, n: &str| {
        rows.iter()
            .find(|r| r["load"] == load && r["nice"] == nice && r["dummies"] == n)
            .map(|r| r["target_units_per_s"].parse::<f64>().unwrap())
            .unwrap()
    };
    let rel = |load: &str, nice: &str, n: &str| rate(load, nice, n) / rate(load, nice, "0");
    for r in &rows {
        assert!(
            r["target_units_per_s"].parse::<f64>().unwrap() > 0.0,
            "{r:?}"
        );
    }
    // 2 CPUs, 17 runnable vCPUs: a fair share is 2/17 of a CPU, far below the target alone.
    assert!(rel("busy", "0", "16") < 0.5, "{csv}");
    // nice −5 weighs about three times nice 0.
    assert!(rel("busy", "-5", "16") > rel("busy", "0", "16"), "{csv}");
    // One dummy that computes 10 % of the time leaves the second CPU free.
    assert!(rel("light", "0", "1") > 0.7, "{csv}");
    let c = std::fs::read_to_string(out.join("interference.csv")).unwrap();
    assert_eq!(c.lines().count(), 7, "header + 6 dummy counts");
    let svg = std::fs::read_to_string(out.join("interference.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("nice"));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("Seed 004"), "{summary}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["experiment"], "interference");
    std::fs::remove_dir_all(&out).unwrap();
}
