//! Host memory really falls when memout evicts: measured at the system level, as the peak
//! usage of a memory cgroup the `memout` process runs in (page cache included), not only as
//! the process's RSS. The cgroup is created with a unique name and removed even on failure.

use std::path::PathBuf;
use std::process::Command;

const CGROUP_ROOT: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup (v1) that is removed when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(tag: &str) -> Option<Self> {
        let p =
            PathBuf::from(CGROUP_ROOT).join(format!("memout-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&p).ok()?;
        Some(Cgroup(p))
    }

    fn peak(&self) -> u64 {
        std::fs::read_to_string(self.0.join("memory.max_usage_in_bytes"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Runs `memout args…` inside the cgroup and returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let procs = self.0.join("cgroup.procs");
        let cmd = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg(env!("CARGO_BIN_EXE_memout"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The child has exited by now, so the group is empty and can go.
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn eviction_lowers_system_memory_use() {
    use memout_test_support::Piece;
    let pieces = [Piece::Kvm, Piece::Uffd, Piece::Root, Piece::CgroupV1Memory];
    if !memout_test_support::require_all(&pieces, "host memory") {
        return;
    }
    let (Some(budgeted), Some(unbounded)) = (Cgroup::new("budget"), Cgroup::new("nobudget")) else {
        panic!("cannot create memory cgroups under {CGROUP_ROOT}");
    };
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    const MIB: u64 = 1 << 20;
    let base = [
        "run",
        "swapper",
        "--arg",
        "192",
        "--quota",
        "512M",
        "--region",
        "1G",
        "--no-control",
    ];
    let out = budgeted.run(
        &[
            &base[..],
            &["--eviction", "store", "--store-dir", dir, "--budget", "48M"],
        ]
        .concat(),
    );
    assert!(out.contains("swapper: 192 MiB verified"), "{out}");
    unbounded.run(&base);
    let (with, without) = (budgeted.peak(), unbounded.peak());
    eprintln!(
        "peak cgroup usage: {} MiB with a 48 MiB budget, {} MiB without",
        with / MIB,
        without / MIB
    );
    // Without a budget the whole 192 MiB working set is charged; with it, the budget plus the
    // process itself (binary, heap, page tables, a chunk of slack) — and no page cache for the
    // store, which is written with O_DIRECT.
    assert!(
        without >= 192 * MIB,
        "control run did not show the working set: {without}"
    );
    assert!(
        with <= 48 * MIB + 64 * MIB,
        "budgeted run peaked at {} MiB",
        with / MIB
    );
    assert!(
        with + 96 * MIB <= without,
        "eviction saved too little: {with} vs {without}"
    );
}
