//! The exit-free fast path with real KVM guests: a warmed guest allocates and frees single
//! pages with no VM exit at all (counted by the VMM), a scribbling guest hurts only itself,
//! and reclaims and resizes racing a churning guest lose none of its data.

use memout_protocol::ring::PAGE_SIZE;
use memout_server::{ResizeOptions, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{GuestSetup, RunConfig, RunReport, run_guest};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn image() -> GuestImage {
    GuestImage::parse(
        memout_vmm::images::get("fastpath")
            .expect("built-in")
            .to_vec(),
    )
    .unwrap()
}

fn run(server: &Server, name: &str, arg: u32, quota: u64) -> RunReport {
    let cfg = RunConfig {
        name: name.into(),
        quota_bytes: quota,
        arg,
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    run_guest(server, &image(), &cfg).expect("run set up")
}

/// The guest's own count of fast and doorbell allocations, from its last line.
fn fast_counts(r: &RunReport) -> (u64, u64) {
    let line = r
        .output
        .iter()
        .rev()
        .find(|l| l.starts_with("fast allocs"))
        .unwrap_or_else(|| panic!("no counts in {:?}", r.output));
    let n: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}

#[test]
fn a_warmed_guest_allocates_and_frees_100k_pages_without_a_vm_exit() {
    if !needs_kvm("fastpath") {
        return;
    }
    let server = Server::builder().build().unwrap();
    let r = run(&server, "pairs", 1 | 100 << 8, 64 * MIB);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let (a, b) = (&r.checkpoints[0], &r.checkpoints[1]);
    let doorbells = b.exits.doorbells - a.exits.doorbells;
    // The exits between the two checkpoints, the first checkpoint's own excluded.
    let exits = b.exits.total - a.exits.total - 1;
    assert_eq!(
        (doorbells, exits),
        (0, 0),
        "100 000 pairs after the warm-up took VM exits ({:?} → {:?})",
        a.exits,
        b.exits
    );
    let (fast, slow) = fast_counts(&r);
    assert!(fast >= 100_000, "fast {fast}, slow {slow}");
    let fp = r.stats.fastpath.expect("the guest has a fast path");
    assert!(fp.granted_pages > 0 && fp.stopped.is_none(), "{fp:?}");
    assert_eq!(r.stats.violations, 0);
    eprintln!(
        "100k pairs in {:?} ({:.0} ns per pair); {slow} doorbell allocations in the warm-up",
        b.at - a.at,
        (b.at - a.at).as_nanos() as f64 / 100_000.0
    );
}

#[test]
fn a_guest_that_scribbles_its_fast_path_hurts_only_itself() {
    if !needs_kvm("fastpath") {
        return;
    }
    let server = Server::builder().build().unwrap();
    // A well-behaved guest on the same server runs at the same time.
    let img = image();
    let quiet = {
        let server = Server::builder().build().unwrap();
        std::thread::spawn(move || {
            let cfg = RunConfig {
                name: "quiet".into(),
                quota_bytes: 64 * MIB,
                arg: 1 | 20 << 8,
                timeout: Duration::from_secs(120),
                ..Default::default()
            };
            run_guest(&server, &img, &cfg).expect("run set up")
        })
    };
    let quota = 16 * MIB;
    let r = run(&server, "scribbler", 3, quota);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let fp = r.stats.fastpath.expect("fast path");
    assert!(fp.stopped.is_some(), "the wreckage was noticed: {fp:?}");
    // Never beyond its quota, whatever it wrote.
    assert!(
        r.stats.allocated_pages * PAGE_SIZE <= quota,
        "{:?}",
        r.stats
    );
    let got: u64 = r
        .output
        .iter()
        .find_map(|l| l.strip_prefix("scribbler got "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("the scribbler's count");
    assert!(got * PAGE_SIZE <= quota, "{got} pages");
    let q = quiet.join().unwrap();
    assert!(q.passed(), "{}\n{}", q.outcome, q.output.join("\n"));
}

#[test]
fn the_fast_path_never_takes_a_guest_past_its_quota() {
    if !needs_kvm("fastpath") {
        return;
    }
    let server = Server::builder().build().unwrap();
    let quota = 8 * MIB;
    let r = run(&server, "fill", 5, quota);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let line = r
        .output
        .iter()
        .find(|l| l.starts_with("fill got "))
        .expect("the guest's count");
    let got: u64 = line.split(' ').nth(2).and_then(|n| n.parse().ok()).unwrap();
    assert!(line.ends_with("quota"), "{line}");
    // Every page of the quota, and not one more: the magazine's frames were granted first.
    assert_eq!(got * PAGE_SIZE, quota, "{line}");
    assert_eq!(r.stats.allocated_pages * PAGE_SIZE, quota, "{:?}", r.stats);
    let (fast, slow) = fast_counts(&r);
    assert!(
        fast > slow,
        "mostly without exits: fast {fast}, slow {slow}"
    );
}

#[test]
fn reclaims_and_resizes_racing_a_churning_guest_lose_nothing() {
    if !needs_kvm("fastpath") {
        return;
    }
    let server = Server::builder().build().unwrap();
    let handle = Arc::new(std::sync::Mutex::new(None));
    let h = handle.clone();
    let cfg = RunConfig {
        name: "churn".into(),
        quota_bytes: 64 * MIB,
        arg: 4,
        timeout: Duration::from_secs(120),
        setup: Some(GuestSetup(Arc::new(move |g| {
            *h.lock().unwrap() = Some((**g).clone());
        }))),
        ..Default::default()
    };
    let finish = cfg.finish.clone();
    let img = image();
    let runner = std::thread::spawn(move || run_guest(&server, &img, &cfg).expect("run set up"));
    let g = loop {
        if let Some(g) = handle.lock().unwrap().clone() {
            break g;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let opts = ResizeOptions {
        release_deadline: Duration::from_millis(50),
    };
    let mut reclaimed = 0;
    for i in 0..200 {
        // Shrinks take the fast path's cached frames back first; grows let it refill.
        let bytes = if i % 2 == 0 { MIB } else { 64 * MIB };
        let p = g.resize(bytes, opts).expect("resize");
        reclaimed += p.freed_pages;
        if let Some(done) = g.wait_resize(p.id, Duration::from_secs(5)) {
            assert!(done.shortfall.is_none() || bytes == MIB, "{done:?}");
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    finish.store(true, SeqCst);
    let r = runner.join().unwrap();
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    assert_eq!(r.stats.violations, 0, "{:?}", r.stats);
    let fp = r.stats.fastpath.expect("fast path");
    assert!(fp.stopped.is_none(), "{fp:?}");
    assert!(
        fp.reclaimed_pages > 0 && reclaimed > 0,
        "the resizes took cached frames: {fp:?}"
    );
    eprintln!("{fp:?}; {}", r.output.join(" | "));
}
