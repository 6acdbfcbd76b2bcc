//! `memout experiment ksm --quick`: its outputs are there and make sense. memout's guests:
//! identical guests merge, random ones and unmergeable ones merge nothing, a segment is one
//! host copy. Linux guests under QEMU: booted kernels merge, identical data saves more than
//! random data, unmergeable RAM merges nothing. KSM converged in every run (but Linux guests
//! searching primes, which starve ksmd), every chart has its CSV, the summary compares with
//! seed 000, the manifest names the machine; a second run into the same directory is refused;
//! the system's KSM settings are as before.

use memout_test_support::ksm::{self, KsmState};
use memout_test_support::{Piece, require_all};
use std::collections::HashMap;
use std::process::Command;

fn memout(out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memout"))
        .args(["experiment", "ksm", "--quick", "--out"])
        .arg(out)
        .output()
        .expect("running memout")
}

#[test]
fn the_quick_ksm_experiment_reproduces_seed_000s_shape() {
    if !require_all(&[Piece::Kvm, Piece::Ksm, Piece::Qemu], "experiment_ksm") {
        return;
    }
    let state = KsmState::take();
    let out = std::env::temp_dir().join(format!("memout-exp-ksm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = memout(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (k, v) in ["run", "pages_to_scan", "sleep_millisecs"].map(|k| (k, ksm::read(k))) {
        assert_eq!(v, state.saved(k), "KSM's {k} after the experiment");
    }

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|l| head.iter().copied().zip(l.split(',')).collect())
        .collect();
    assert_eq!(
        rows.len(),
        4 * 2 * 2 + 2 + 4 * 2,
        "memout: 4 focuses × 2 guest counts × off/on, and the segment panel's 2; \
         Linux: 4 focuses × 2 guests × off/on"
    );
    let num = |r: &HashMap<&str, &str>, k: &str| r[k].parse::<f64>().unwrap();
    let (memout_rows, linux_rows): (Vec<_>, Vec<_>) =
        rows.iter().partition(|r| r["guest_kind"] == "memout");
    linux_guests_merge(&linux_rows);
    for r in memout_rows {
        let pages = num(r, "guests") * num(r, "set_mib") * 256.0;
        let merged = num(r, "merged_guest_pages");
        assert_eq!(r["converged"], "true", "{r:?}");
        match (r["focus"], r["ksm"], r["guests"]) {
            // One host copy however many guests map the segment.
            ("segment", _, n) => {
                assert!(num(r, "host_mib") <= num(r, "set_mib") + 2.0, "{r:?}");
                let n: f64 = n.parse().unwrap();
                assert!(
                    num(r, "saved_mib") >= (n - 1.0) * num(r, "set_mib") - 0.5,
                    "{r:?}"
                );
            }
            (_, "off", _) => assert_eq!(merged, 0.0, "unmergeable guests merged: {r:?}"),
            ("fill-random", "on", _) => assert!(merged < pages * 0.05, "{r:?}"),
            (_, "on", "2") => {
                // Identical content: the second guest's copy is merged away (KSM's counters
                // rise by it) and both guests hold KSM pages.
                assert!(num(r, "saved_mib") >= 0.9 * num(r, "set_mib"), "{r:?}");
                assert!(merged > 0.0, "{r:?}");
            }
            (_, "on", _) => assert!(merged < pages * 0.05, "one guest has no twin: {r:?}"),
            _ => unreachable!(),
        }
    }
    for (stem, counts) in [
        ("ksm-start", 2),
        ("ksm-primes", 2),
        ("ksm-fill", 2),
        ("ksm-primes-rate", 2),
        ("ksm-segment", 2),
        ("ksm-segment-time", 2),
        ("ksm-linux-start", 1),
        ("ksm-linux-primes", 1),
        ("ksm-linux-fill", 1),
        ("ksm-linux-primes-rate", 1),
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("KSM"), "{stem}");
        let c = std::fs::read_to_string(out.join(format!("{stem}.csv"))).unwrap();
        assert_eq!(
            c.lines().count(),
            1 + counts,
            "{stem}.csv: header + guest counts"
        );
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("Against seed 000's findings (memout's KVM guests)")
            && summary.contains("Against seed 000's findings (Linux guests under QEMU)"),
        "{summary}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["experiment"], "ksm");
    assert!(
        m["machine"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    assert!(m["machine"]["mem_total_kib"].as_u64().unwrap() > 0);

    let again = memout(&out);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds results"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// The Linux rows (2 guests): booted kernels share pages, identical data adds its copy to the
/// saving and random data does not, `mem-merge=off` merges nothing, and every guest's data
/// stayed intact (the experiment fails otherwise).
fn linux_guests_merge(rows: &[&HashMap<&str, &str>]) {
    let num = |r: &HashMap<&str, &str>, k: &str| r[k].parse::<f64>().unwrap();
    let get = |focus: &str, ksm: &str| {
        *rows
            .iter()
            .find(|r| r["focus"] == focus && r["ksm"] == ksm)
            .unwrap_or_else(|| panic!("no Linux row {focus} {ksm}: {rows:?}"))
    };
    for r in rows {
        assert_eq!(r["guests"], "2", "{r:?}");
        assert_eq!(r["faults"], "", "memout serves no Linux guest here: {r:?}");
        if r["ksm"] == "off" {
            assert_eq!(num(r, "merged_guest_pages"), 0.0, "{r:?}");
            assert_eq!(r["converged"], "true", "{r:?}");
        } else {
            assert!(num(r, "merged_guest_pages") > 0.0, "{r:?}");
            assert!(num(r, "saved_mib") > 0.0, "{r:?}");
        }
        // ksmd (nice 5) gets little CPU beside two guests searching primes.
        if r["focus"] != "primes" {
            assert_eq!(r["converged"], "true", "{r:?}");
        }
    }
    let start = get("start", "on");
    assert!(
        num(start, "host_mib") < num(get("start", "off"), "host_mib"),
        "{start:?}"
    );
    let (ident, random) = (get("fill-identical", "on"), get("fill-random", "on"));
    assert!(
        num(ident, "saved_mib") >= num(random, "saved_mib") + num(ident, "set_mib") / 2.0,
        "one guest's identical data merges with the other's, random data does not: \
         {ident:?} {random:?}"
    );
    for ksm in ["off", "on"] {
        assert!(num(get("primes", ksm), "primes_per_s") > 0.0);
    }
}
