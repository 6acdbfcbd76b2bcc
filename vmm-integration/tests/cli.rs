//! The `memout` binary: bad images and arguments get clear errors, not panics.

use std::process::Command;

fn memout(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memout"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean_failure(args: &[&str], needle: &str) {
    let (code, _, err) = memout(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
}

#[test]
fn missing_image() {
    assert_clean_failure(
        &["run", "/nonexistent/guest.bin"],
        "cannot read guest image /nonexistent/guest.bin",
    );
}

#[test]
fn invalid_and_oversized_images() {
    let dir = std::env::temp_dir().join(format!("memout-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.bin");
    std::fs::write(
        &junk,
        b"this is not a guest image at all, just some bytes here",
    )
    .unwrap();
    assert_clean_failure(&["run", junk.to_str().unwrap()], "not a memout guest image");
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(
        &["run", empty.to_str().unwrap()],
        "not a memout guest image",
    );
    let big = dir.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert_clean_failure(&["run", big.to_str().unwrap()], "image area holds");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments() {
    assert_clean_failure(&["run", "demo", "--quota", "12Q"], "unknown size suffix");
    assert_clean_failure(&["run", "demo", "--policy", "nope"], "unknown policy");
    assert_clean_failure(&["run", "demo", "--quota", "8G", "--region", "4G"], "quota");
    assert_clean_failure(&["run", "demo", "--region", "3M"], "2 MiB");
}

#[test]
fn lists_built_in_guests() {
    let (code, out, _) = memout(&["guests"]);
    assert_eq!(code, 0);
    assert!(out.contains("demo") && out.contains("malicious"), "{out}");
}

#[test]
fn bench_rpc_reports_json_with_ratios() {
    if !memout_test_support::require_all(
        &[
            memout_test_support::Piece::Kvm,
            memout_test_support::Piece::Uffd,
        ],
        "bench json",
    ) {
        return;
    }
    let (code, out, err) = memout(&["bench", "rpc", "--rounds", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["scenario"], "rpc");
    assert_eq!(v["unit"], "us per op");
    let bare = v["medians"]["bare doorbell exit"].as_f64().unwrap();
    assert!(bare > 0.1 && bare < 10_000.0, "{v}");
    let ratio = v["ratio"].as_f64().unwrap();
    let memout = v["medians"]["alloc+free 1 page, 1 doorbell"]
        .as_f64()
        .unwrap();
    assert!(
        (ratio - memout / bare).abs() < 1e-9,
        "ratio is not memout ÷ baseline: {v}"
    );
    // One round judges no target.
    assert!(
        v["targets"]["alloc+free (1 doorbell)"]["met"].is_null(),
        "{v}"
    );
    assert_eq!(v["targets"]["alloc+free (1 doorbell)"]["max"], 1.3);
}

#[test]
fn bench_swap_verifies_random_content_against_two_baselines() {
    use memout_test_support::Piece;
    if !memout_test_support::require_all(&[Piece::Kvm, Piece::Uffd, Piece::Swap], "bench swap") {
        return;
    }
    // 32 MiB of random pages with 25 % zero pages; the guest verifies every word after the
    // swap-in, so a wrong slot mapping fails the run.
    let args = [
        "bench",
        "swap",
        "--rounds",
        "1",
        "--mib",
        "32",
        "--zero-pct",
        "25",
        "--json",
    ];
    let (code, out, err) = memout(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["extra"]["zero_page_percent"], 25);
    assert_eq!(v["spread"].as_object().unwrap().len(), 6, "{v}");
    for r in ["swap-out vs kernel swap", "swap-in vs kernel swap"] {
        assert!(v["ratios"][r].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
    assert!(
        v["extra"]["kernel_paged_out_fraction_worst"]
            .as_f64()
            .unwrap()
            > 0.9,
        "{v}"
    );
    assert_eq!(v["extra"]["memout_evicted_fraction_worst"], 1.0, "{v}");
}

#[test]
fn bench_rejects_unknown_scenarios_and_bad_rounds() {
    assert_clean_failure(&["bench", "teleport"], "unknown scenario");
    assert_clean_failure(&["bench", "rpc", "--rounds", "0"], "--rounds");
    assert_clean_failure(&["bench", "populate", "--mib", "0"], "--mib");
}

#[test]
fn memwork_takes_parameters_and_reports_json() {
    if !memout_test_support::require_all(
        &[
            memout_test_support::Piece::Kvm,
            memout_test_support::Piece::Uffd,
        ],
        "memwork",
    ) {
        return;
    }
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run",
            "memwork",
            "--no-control",
            "--region",
            "256M",
            "--quota",
            "64M",
            "--json",
        ];
        a.extend_from_slice(extra);
        let (code, out, err) = memout(&a);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{a:?}: not one JSON object ({e}): {out} {err}"));
        (code, v)
    };
    // 16 MiB, uniform random, 30 % writes, 10 % zero pages, random content, 5000 accesses,
    // evicting to the store under an 8 MiB budget: every word comes back.
    let store_dir = std::env::temp_dir();
    let (code, v) = run(&[
        "--eviction",
        "store",
        "--store-dir",
        store_dir.to_str().unwrap(),
        "--budget",
        "8M",
        "--param",
        "16,1,30,10,0,5,7",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["passed"], true);
    let line = v["output"][0].as_str().unwrap();
    assert!(
        line.starts_with("MEMWORK: ops 5000 ") && line.ends_with(" bad 0"),
        "{v}"
    );
    let ids: Vec<u64> = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(v["stats"]["swapins_pages"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["stats"]["resident_pages"].as_u64().unwrap() <= 8 * 256 + 512,
        "{v}"
    );

    // The same workload on a plain memslot (no memout server), as a static VM runs it.
    let (code, v) = run(&["--backing", "plain", "--param", "16,2,30,10,1,5,7,1"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["output"][0].as_str().unwrap().ends_with(" bad 0"), "{v}");

    // Bad parameters are the guest's clear failure, and so is a plain run whose guest asks
    // for memout (nothing answers its ring).
    let (code, v) = run(&["--param", "16,9"]);
    assert_ne!(code, 0);
    assert!(
        v["output"][0].as_str().unwrap().contains("bad parameters"),
        "{v}"
    );
    let (code, v) = run(&["--backing", "plain", "--param", "16,1,30,10,0,5,7"]);
    assert_ne!(code, 0);
    assert!(
        v["output"][0].as_str().unwrap().starts_with("FAIL: init"),
        "{v}"
    );
}
