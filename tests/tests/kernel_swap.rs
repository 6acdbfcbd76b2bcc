//! Kernel mode: memout asks the kernel to swap cold guest memory out (MADV_PAGEOUT) to a
//! swapfile. The swapfile is made for this test (unique name) and is switched off and removed
//! when the test ends, pass or fail.
//!
//! Also: a resize of a kernel-mode guest evicts through the kernel's swap too, and the data
//! comes back intact.

use memout_protocol::control::ResizePhase;
use memout_protocol::ring::PAGE_SIZE;
use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{Eviction, ResizeOptions, Server};
use memout_tests::kvm_or_skip;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vm_memory::{GuestAddress, GuestMemoryMmap};

struct Swapfile(PathBuf);

impl Swapfile {
    fn new(tag: &str, mib: u64) -> Result<Self, String> {
        let p = std::env::temp_dir().join(format!("memout-test-swap-{tag}-{}", std::process::id()));
        let sh = |cmd: &str, args: &[&str]| {
            let st = Command::new(cmd)
                .args(args)
                .output()
                .map_err(|e| format!("{cmd}: {e}"))?;
            st.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&st.stderr)))
        };
        let path = p.to_str().unwrap().to_string();
        let s = Swapfile(p); // from here on, Drop cleans up whatever was done
        sh("fallocate", &["-l", &format!("{mib}M"), &path])?;
        std::fs::set_permissions(&s.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        sh("mkswap", &[&path])?;
        sh("swapon", &[&path])?;
        Ok(s)
    }
}

impl Drop for Swapfile {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn kernel_mode_pages_out_and_stays_correct() {
    if !kvm_or_skip("kernel-swap") {
        return;
    }
    let swap = match Swapfile::new("budget", 512) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: cannot set up a swapfile here: {e}");
            return;
        }
    };
    let img = GuestImage::parse(memout_vmm::images::get("swapper").unwrap().to_vec()).unwrap();
    let cfg = RunConfig {
        name: "kernel-swap".into(),
        arg: 128 | 1 << 16, // also page everything out once after the first fill
        quota_bytes: 512 << 20,
        timeout: Duration::from_secs(120),
        eviction: Eviction::Kernel,
        budget_bytes: Some(32 << 20),
        ..Default::default()
    };
    let r = run_guest(&Server::builder().build().unwrap(), &img, &cfg).unwrap();
    drop(swap);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let after_evict = r.checkpoints.iter().find(|c| c.id == 2).unwrap();
    assert!(
        after_evict.stats.evicted_pages > 16 * 256,
        "kernel swapped little: {:?}",
        after_evict.stats
    );
    assert!(
        after_evict.region_rss < 64 << 20,
        "RSS {} after page-out",
        after_evict.region_rss
    );
    assert_eq!(after_evict.stats.eviction_mode, "kernel");
    assert!(r.stats.evictions_pages > 128 * 256, "{:?}", r.stats);
    // The kernel swaps pages back in behind memout's back; the budget is re-checked every
    // 50 ms against the real RSS, so it holds loosely: well under the 128 MiB working set.
    let end = r.checkpoints.iter().find(|c| c.id == 3).unwrap();
    eprintln!(
        "kernel mode: RSS {} MiB at the end (budget 32 MiB)",
        end.region_rss >> 20
    );
    assert!(
        end.region_rss <= 96 << 20,
        "RSS {} at the end",
        end.region_rss
    );
}

#[test]
fn kernel_mode_resize_pages_out_to_the_target_and_keeps_the_data() {
    let swap = match Swapfile::new("resize", 256) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: cannot set up a swapfile here: {e}");
            return;
        }
    };
    const MIB: u64 = 1 << 20;
    const PAGES: u64 = 64 * MIB / PAGE_SIZE;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = match server.add_guest(host_test_config(
        "kresize",
        64 * MIB,
        64 * MIB,
        Eviction::Kernel,
        &mem,
    )) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let mut ring = RingDriver::new(mem, 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    assert_eq!(ring.alloc(&h, PAGES, 0x8000, 1).status, 0);
    let page = |p: u64| (h.region_host_addr() + (p * PAGE_SIZE) as usize) as *mut u64;
    for p in 0..PAGES {
        // SAFETY: page p lies in the region, in frames granted to the guest.
        unsafe { page(p).write_volatile(p ^ 0x5a5a) };
    }
    // The "guest" (host threads here) never releases: the shrink must page out.
    let first = h
        .resize(
            16 * MIB,
            ResizeOptions {
                release_deadline: Duration::from_millis(20),
            },
        )
        .unwrap();
    let end = h.wait_resize(first.id, Duration::from_secs(60)).unwrap();
    let rss = memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap();
    assert_eq!(end.phase, ResizePhase::Done, "{end:?}");
    assert!(end.evicted_bytes >= 48 * MIB, "{end:?}");
    assert!(rss <= 16 * MIB, "RSS {rss} above the 16 MiB target");
    assert!(
        h.stats().evicted_pages * PAGE_SIZE >= 48 * MIB,
        "{:?}",
        h.stats()
    );
    // Every page comes back (through the kernel's swap-in) with its content.
    let bad = (0..PAGES)
        // SAFETY: as above.
        .filter(|&p| unsafe { page(p).read_volatile() } != p ^ 0x5a5a)
        .count();
    assert_eq!(bad, 0);
    drop(h);
    drop(swap);
}
