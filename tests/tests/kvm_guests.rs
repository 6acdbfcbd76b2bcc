//! Real KVM guests against the real server: the demo, and every malicious mode.

use memout_server::{GuestFault, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::layout::REGION_GPA;
use memout_vmm::runner::{Outcome, RunConfig, RunReport, run_guest};
use std::time::Duration;

fn run(name: &str, arg: u32, quota: u64) -> RunReport {
    let img = GuestImage::parse(memout_vmm::images::get(name).expect("built-in").to_vec()).unwrap();
    let server = Server::builder().build().unwrap();
    let cfg = RunConfig {
        name: format!("{name}-{arg}"),
        quota_bytes: quota,
        arg,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    run_guest(&server, &img, &cfg).expect("run set up")
}

#[test]
fn demo_verifies_its_data_and_host_rss_follows_frees() {
    if !needs_kvm("demo") {
        return;
    }
    let r = run("demo", 0, 256 << 20);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    assert!(r.output.iter().any(|l| l == "demo: PASS"));
    // The fast-path part: one doorbell fills the magazine, the rest takes no VM exit.
    assert!(
        r.output
            .iter()
            .any(|l| l.starts_with("demo: 100000 single-page alloc/free pairs, 1 through")),
        "{:?}",
        r.output
    );
    let cp: Vec<_> = r
        .checkpoints
        .iter()
        .map(|c| (c.id, c.region_rss, c.stats.resident_pages))
        .collect();
    assert_eq!(cp.len(), 4, "{cp:?}");
    let (after_fill, after_free, after_realloc) = (cp[1], cp[2], cp[3]);
    // 64 MiB backed after the fill, 32 MiB after freeing half, 64 MiB again after re-allocating.
    const MIB: u64 = 1 << 20;
    assert!(
        after_fill.1 >= 64 * MIB && after_fill.1 <= 66 * MIB,
        "{cp:?}"
    );
    assert!(
        after_free.1 >= 32 * MIB && after_free.1 <= 33 * MIB,
        "{cp:?}"
    );
    assert!(after_realloc.1 >= 64 * MIB, "{cp:?}");
    assert_eq!(after_fill.2, 16384);
    assert_eq!(after_free.2, 8192);
    assert_eq!(r.stats.freed_pages, 8192);
    assert_eq!(r.stats.bytes_returned, 32 * MIB);
    assert_eq!(r.stats.violations, 0);
}

#[test]
fn malicious_requests_get_error_statuses_and_no_memory() {
    if !needs_kvm("malicious") {
        return;
    }
    for mode in [1, 2, 3, 4, 5, 6, 9] {
        let r = run("malicious", mode, 64 << 20);
        assert!(
            r.passed(),
            "mode {mode}: {}\n{}",
            r.outcome,
            r.output.join("\n")
        );
        assert_eq!(r.stats.allocated_pages, 0, "mode {mode}");
        assert_eq!(r.stats.resident_pages, 0, "mode {mode}");
        assert_eq!(r.region_rss, 0, "mode {mode}: host memory was handed out");
        assert!(
            r.stats.request_errors > 0 || mode == 2,
            "mode {mode}: no request was refused"
        );
    }
}

#[test]
fn touching_frames_not_held_stops_the_guest_with_the_address() {
    if !needs_kvm("malicious-touch") {
        return;
    }
    let r = run("malicious", 7, 64 << 20);
    assert_eq!(
        r.outcome,
        Outcome::Stopped(GuestFault::Unowned {
            gpa: REGION_GPA + 0x123000
        }),
        "{:?}",
        r.output
    );
    assert_eq!(
        (r.stats.violations, r.stats.resident_pages, r.region_rss),
        (1, 0, 0)
    );
    let r = run("malicious", 8, 64 << 20);
    assert_eq!(
        r.outcome,
        Outcome::Stopped(GuestFault::Unowned { gpa: REGION_GPA }),
        "{:?}",
        r.output
    );
    assert_eq!((r.stats.resident_pages, r.region_rss), (0, 0));
}

#[test]
fn kvm_touching_frames_not_held_for_the_guest_ends_the_run() {
    if !needs_kvm("malicious-string-io") {
        return;
    }
    // KVM itself writes (rep insl) or reads (rep outsl) the frame while emulating: its fault
    // cannot be interrupted by the kick signal, so the server must answer it for the vCPU to
    // leave KVM_RUN. Before that was done the vCPU thread spun in the kernel forever.
    for (mode, off) in [(12u32, 0x456000u64), (13, 0x789000)] {
        let t0 = std::time::Instant::now();
        let r = run("malicious", mode, 64 << 20);
        assert_eq!(
            r.outcome,
            Outcome::Stopped(GuestFault::Unowned {
                gpa: REGION_GPA + off
            }),
            "mode {mode}: {:?}",
            r.output
        );
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "mode {mode}: took {:?}",
            t0.elapsed()
        );
        assert_eq!(r.stats.violations, 1, "mode {mode}");
        assert_eq!(r.stats.allocated_pages, 0, "mode {mode}");
    }
}

#[test]
fn a_hung_guest_times_out_instead_of_hanging() {
    if !needs_kvm("timeout") {
        return;
    }
    let img = GuestImage::parse(memout_vmm::images::get("malicious").unwrap().to_vec()).unwrap();
    let server = Server::builder().build().unwrap();
    let cfg = RunConfig {
        timeout: Duration::from_millis(300),
        arg: 10,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let r = run_guest(&server, &img, &cfg).unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut(cfg.timeout));
    assert!(t0.elapsed() < Duration::from_secs(10));
}
