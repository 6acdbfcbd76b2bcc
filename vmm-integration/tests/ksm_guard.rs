//! `memout run --ksm on` killed with SIGKILL: its guard process (`memout ksm-guard`) puts the
//! system's KSM settings back; ended normally, memout restores them itself and the guard
//! touches nothing.

use memout_test_support::ksm::{KsmState, knobs, set_distinct};
use memout_test_support::{Piece, require_all, wait_until as wait};
use std::process::{Child, Command, Stdio};

/// `memout run ksmfill --ksm on`, holding 8 MiB until `finish` seconds pass.
fn memout(finish: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_memout"))
        .args([
            "run", "ksmfill", "--arg", "8", "--region", "64M", "--quota", "32M",
        ])
        .args(["--no-control", "--ksm", "on", "--mergeable"])
        .args(["--finish-after", &finish.to_string(), "--timeout", "120"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting memout")
}

#[test]
fn a_killed_memout_leaves_ksm_as_it_found_it() {
    if !require_all(&[Piece::Kvm, Piece::Ksm], "ksm_guard") {
        return;
    }
    let _state = KsmState::take();
    let found = set_distinct();
    let mut m = memout(60);
    wait("memout to turn KSM on", 30, || {
        knobs() == ("1".into(), "1250".into(), "20".into())
    });
    m.kill().unwrap(); // SIGKILL: no destructor runs in memout
    m.wait().unwrap();
    wait("the guard to restore KSM's settings", 10, || {
        knobs() == found
    });
}

#[test]
fn a_memout_that_ends_restores_ksm_itself() {
    if !require_all(&[Piece::Kvm, Piece::Ksm], "ksm_guard") {
        return;
    }
    let _state = KsmState::take();
    let found = set_distinct();
    let mut m = memout(2);
    wait("memout to turn KSM on", 30, || knobs().0 == "1");
    let status = m.wait().unwrap();
    assert!(status.success(), "memout ended with {status}");
    assert_eq!(knobs(), found, "restored by the time memout exits");
}
