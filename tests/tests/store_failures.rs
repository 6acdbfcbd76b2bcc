//! A failing backing store: ENOSPC or EIO while evicting stops eviction with a clear per-guest
//! error and loses nothing; EIO while swapping in stops the guest, naming the frame, rather than
//! giving it zeroes.

use memout_server::{BackingStore, EvictError, Eviction, FileStore, GuestFault, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::layout::REGION_GPA;
use memout_vmm::runner::{Outcome, RunConfig, RunReport, run_guest};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// A real file store whose writes fail with `write_errno` once `write_budget` slots were
/// written, and whose reads fail with EIO if `fail_reads`.
struct FailingStore {
    inner: FileStore,
    write_budget: AtomicU64,
    write_errno: i32,
    fail_reads: bool,
}

impl BackingStore for FailingStore {
    fn write(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        let pages = data.len() as u64 / 4096;
        let left = self.write_budget.load(SeqCst);
        if left < pages {
            return Err(io::Error::from_raw_os_error(self.write_errno));
        }
        self.write_budget.store(left - pages, SeqCst);
        self.inner.write(slot, data)
    }
    fn read(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.fail_reads {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read(slot, buf)
    }
    fn capacity_slots(&self) -> u64 {
        self.inner.capacity_slots()
    }
    fn bytes_on_disk(&self) -> u64 {
        self.inner.bytes_on_disk()
    }
    fn describe(&self) -> String {
        format!("failing {}", self.inner.describe())
    }
}

fn run(
    arg: u32,
    budget_mib: Option<u64>,
    budget_slots: u64,
    errno: i32,
    fail_reads: bool,
) -> RunReport {
    let store = FailingStore {
        inner: FileStore::create(&std::env::temp_dir(), "failing", 1 << 30).unwrap(),
        write_budget: AtomicU64::new(budget_slots),
        write_errno: errno,
        fail_reads,
    };
    let img = GuestImage::parse(memout_vmm::images::get("swapper").unwrap().to_vec()).unwrap();
    let cfg = RunConfig {
        name: "failing".into(),
        arg,
        quota_bytes: 1 << 30,
        timeout: Duration::from_secs(120),
        eviction: Eviction::Store(Arc::new(store)),
        budget_bytes: budget_mib.map(|m| m << 20),
        ..Default::default()
    };
    run_guest(&Server::builder().build().unwrap(), &img, &cfg).unwrap()
}

#[test]
fn store_full_stops_eviction_and_keeps_data() {
    if !needs_kvm("store-enospc") {
        return;
    }
    // 64 MiB working set, 16 MiB budget, room for 8 MiB in the store.
    let r = run(64, Some(16), 2048, libc::ENOSPC, false);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let s = &r.stats;
    assert!(s.evict_errors > 0, "{s:?}");
    match &s.last_evict_error {
        Some(EvictError::Store { source, .. }) => {
            assert_eq!(source.get().raw_os_error(), Some(libc::ENOSPC), "{source}")
        }
        other => panic!("expected a store write error, got {other:?}"),
    }
    // What could not be evicted stayed resident: nothing lost, the budget not met.
    assert!(s.resident_pages + s.evicted_pages == 64 * 256, "{s:?}");
    assert!(s.resident_pages > 16 * 256, "{s:?}");
}

#[test]
fn store_write_error_stops_eviction_and_keeps_data() {
    if !needs_kvm("store-eio-write") {
        return;
    }
    let r = run(32, Some(8), 0, libc::EIO, false);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let s = &r.stats;
    assert_eq!(s.evicted_pages, 0, "{s:?}");
    assert_eq!(s.resident_pages, 32 * 256);
    match &s.last_evict_error {
        Some(EvictError::Store { source, .. }) => {
            assert_eq!(source.get().raw_os_error(), Some(libc::EIO), "{source}")
        }
        other => panic!("expected a store write error, got {other:?}"),
    }
}

#[test]
fn store_read_error_stops_the_guest_naming_the_frame() {
    if !needs_kvm("store-eio-read") {
        return;
    }
    // Evict everything after the first fill; every read back fails.
    let r = run(16 | 1 << 16, None, u64::MAX, libc::EIO, true);
    match &r.outcome {
        Outcome::Stopped(GuestFault::SwapIn { gpa, source }) => {
            assert!(
                *gpa >= REGION_GPA && *gpa < REGION_GPA + (16 << 20),
                "{gpa:#x}"
            );
            assert_eq!(source.get().raw_os_error(), Some(libc::EIO), "{source}");
            let msg = r.outcome.to_string();
            assert!(msg.contains(&format!("{gpa:#x}")), "{msg}");
        }
        other => panic!(
            "expected a swap-in stop, got {other:?}\n{}",
            r.output.join("\n")
        ),
    }
    assert!(
        !r.output.iter().any(|l| l.contains("verified")),
        "guest must not finish"
    );
}
