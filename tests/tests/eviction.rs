//! Eviction with a real KVM guest: a working set larger than the resident budget, verified
//! page by page over several passes; explicit eviction of everything; store files.

use memout_server::{Eviction, FileStore, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, RunReport, run_guest};
use std::sync::Arc;
use std::time::Duration;

fn swapper(arg: u32, budget_mib: Option<u64>, eviction: Eviction) -> RunReport {
    let img = GuestImage::parse(memout_vmm::images::get("swapper").unwrap().to_vec()).unwrap();
    let server = Server::builder().build().unwrap();
    let cfg = RunConfig {
        name: "swapper".into(),
        arg,
        quota_bytes: 1 << 30,
        timeout: Duration::from_secs(120),
        eviction,
        budget_bytes: budget_mib.map(|m| m << 20),
        ..Default::default()
    };
    run_guest(&server, &img, &cfg).unwrap()
}

fn store(dir: &std::path::Path) -> Eviction {
    Eviction::Store(Arc::new(FileStore::create(dir, "test", 1 << 30).unwrap()))
}

/// A scratch directory removed when the test ends, pass or fail.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("memout-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

#[test]
fn working_set_larger_than_budget_stays_correct() {
    if !needs_kvm("eviction-budget") {
        return;
    }
    let dir = scratch_dir("budget");
    let r = swapper(128, Some(32), store(&dir.0));
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let s = &r.stats;
    // Budget 32 MiB = 8192 pages; enforcement evicts at least a chunk at a time after a populate
    // of at most a chunk, so resident stays within budget + one chunk.
    for c in &r.checkpoints {
        assert!(c.stats.resident_pages <= 8192 + 512, "{:?}", c.stats);
        assert!(
            c.region_rss <= (32 << 20) + (2 << 20),
            "RSS {} at checkpoint {}",
            c.region_rss,
            c.id
        );
    }
    assert!(
        s.evictions_pages > 3 * 32768,
        "every pass should evict: {s:?}"
    );
    assert!(
        s.swapins_pages > 2 * 32768,
        "every pass should swap in: {s:?}"
    );
    assert_eq!(s.evict_errors, 0, "{s:?}");
    // Metadata stays small: one entry per evicted run.
    assert!(s.evicted_metadata_entries < 1024, "{s:?}");
}

#[test]
fn evicting_everything_then_reading_it_back() {
    if !needs_kvm("eviction-all") {
        return;
    }
    let dir = scratch_dir("all");
    let r = swapper(64 | 1 << 16, None, store(&dir.0));
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    assert_eq!(r.evictions.len(), 1);
    let evicted = r.evictions[0].result.clone().unwrap();
    assert_eq!(evicted, 64 << 20);
    let at = |id: u32| r.checkpoints.iter().find(|c| c.id == id).unwrap().clone();
    assert!(at(1).region_rss >= 64 << 20);
    assert_eq!(at(2).region_rss, 0, "host memory was not released");
    assert_eq!(at(2).stats.evicted_pages, 16384);
    assert!(at(2).stats.store_bytes >= 64 << 20);
    assert_eq!(r.stats.evicted_pages, 0, "all swapped back in by the end");
    assert_eq!(r.stats.swapins_pages, 16384);
    // The store file is gone with the guest.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}
