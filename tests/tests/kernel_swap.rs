//! Kernel mode: memout asks the kernel to swap cold guest memory out (MADV_PAGEOUT) to a
//! swapfile. The swapfile is made for this test (unique name) and is switched off and removed
//! when the test ends, pass or fail.

use memout_server::{Eviction, Server};
use memout_tests::kvm_or_skip;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct Swapfile(PathBuf);

impl Swapfile {
    fn new(mib: u64) -> Result<Self, String> {
        let p = std::env::temp_dir().join(format!("memout-test-swap-{}", std::process::id()));
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
    let swap = match Swapfile::new(512) {
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
