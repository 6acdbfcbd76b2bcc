//! `memout experiment swap-pressure --quick`: its outputs are there and make sense (no data
//! errors; memout's throughput falls as the budget falls under uniform random access, it
//! evicts below 100 % and uses less host memory at 25 % than at 100 %; kernel swap really
//! reads from swap at 25 % and is slower there than at 100 %; every plot has its CSV; the
//! manifest names the machine), and the temporary swapfile and memory cgroups are gone
//! afterwards, also when the experiment is interrupted with Ctrl-C (SIGINT), or killed
//! (SIGTERM) after whoever read its stderr has gone. The quick run
//! includes the memout→Redis mode against a `redis-server` the test starts, whose keys are
//! all gone afterwards.

use memout_test_support::{Piece, require_all};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests here switch swapfiles on: one at a time.
static SWAP: Mutex<()> = Mutex::new(());

fn scratch(tag: &str) -> PathBuf {
    // Not /tmp: it may be a tmpfs, which cannot hold a swapfile.
    let d = Path::new("/var/tmp").join(format!("memout-exp-swap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn experiment(out: &Path, scratch: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_memout"));
    c.args(["experiment", "swap-pressure", "--quick", "--out"])
        .arg(out)
        .arg("--scratch-dir")
        .arg(scratch);
    c
}

/// Memory cgroups the experiment process `pid` made that are still there.
fn cgroups_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/memory")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("memout-swap-") && n.ends_with(&format!("-{pid}")))
        .collect()
}

/// Swapfiles of this scratch directory that are switched on or still on disk.
fn leftovers(scratch: &Path) -> Vec<String> {
    let on = String::from_utf8_lossy(
        &Command::new("swapon")
            .arg("--show=NAME")
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .filter(|l| l.starts_with(scratch.to_str().unwrap()))
    .map(str::to_string)
    .collect::<Vec<_>>();
    let files = std::fs::read_dir(scratch)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("memout-swap-"));
    on.into_iter().chain(files).collect()
}

/// On drop, removes what an experiment process left behind (its cgroups, swapfiles and
/// directories): a failing test must not leave the host changed.
struct Undo<'a> {
    pid: u32,
    scratch: &'a Path,
    out: &'a Path,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for c in cgroups_of(self.pid) {
            memout_vmm::cleanup::remove_cgroup(&Path::new("/sys/fs/cgroup/memory").join(c));
        }
        for f in leftovers(self.scratch) {
            memout_vmm::cleanup::remove_swapfile(Path::new(&f));
        }
        let _ = std::fs::remove_dir_all(self.scratch);
        let _ = std::fs::remove_dir_all(self.out);
    }
}

#[test]
fn the_quick_swap_pressure_experiment_makes_sense() {
    let pieces = [
        Piece::Kvm,
        Piece::Uffd,
        Piece::Swap,
        Piece::CgroupV1Memory,
        Piece::Redis,
    ];
    if !require_all(&pieces, "experiment_swap") {
        return;
    }
    let _one = SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let redis = memout_test_support::redis::RedisServer::start(0);
    let (out, dir) = (scratch("out"), scratch("files"));
    let _ = std::fs::remove_dir_all(&out);
    let child = experiment(&out, &dir)
        .args(["--redis", &redis.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running memout");
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert_eq!(cgroups_of(pid), Vec::<String>::new());

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|l| head.iter().copied().zip(l.split(',')).collect())
        .collect();
    assert_eq!(rows.len(), 3 * 4 * 3, "3 patterns × 4 budgets × 3 modes");
    assert_eq!(
        redis.cli(&["DBSIZE"]).trim(),
        "0",
        "the guests' keys are gone"
    );
    let num = |r: &HashMap<&str, &str>, k: &str| r[k].parse::<f64>().unwrap();
    for r in &rows {
        assert_eq!(r["data_errors"], "0", "{r:?}");
        assert!(num(r, "ops_per_s") > 0.0, "{r:?}");
        assert!(num(r, "cpu_s") > 0.0, "{r:?}");
        if r["mode"] != "kernel-swap" && r["budget_pct"] != "100" {
            assert!(num(r, "evicted_pages") > 0.0, "{r:?}");
        }
    }
    let get = |pattern: &str, mode: &str, budget: &str, k: &str| {
        rows.iter()
            .find(|r| r["pattern"] == pattern && r["mode"] == mode && r["budget_pct"] == budget)
            .map(|r| num(r, k))
            .unwrap()
    };
    let ops = |pattern: &str, mode: &str, budget: &str| get(pattern, mode, budget, "ops_per_s");
    for p in ["sequential", "uniform", "hot-cold"] {
        let peak = |b| get(p, "memout", b, "host_peak_mib");
        assert!(peak("25") < peak("100"), "{p}: memout's host memory");
        // The kernel really swaps: its cgroup leaves no room for a swap cache to hide in.
        assert!(
            get(p, "kernel-swap", "25", "swapin_pages") > 0.0,
            "{p}: pswpin"
        );
    }
    let memout: Vec<f64> = ["100", "75", "50", "25"]
        .iter()
        .map(|b| ops("uniform", "memout", b))
        .collect();
    assert!(
        memout.windows(2).all(|w| w[0] > w[1]),
        "uniform random: memout's throughput falls with the budget: {memout:?}"
    );
    assert!(ops("uniform", "kernel-swap", "25") < ops("uniform", "kernel-swap", "100"));

    for stem in ["swap-throughput", "swap-host-memory"] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("memout"), "{stem}");
        let c = std::fs::read_to_string(out.join(format!("{stem}.csv"))).unwrap();
        assert_eq!(c.lines().count(), 5, "{stem}.csv: header + 4 budgets");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| ratio |"), "{summary}");
    assert!(summary.contains("## memout evicting to Redis"), "{summary}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["experiment"], "swap-pressure");
    assert!(m["machine"]["cpus"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_removes_the_swapfile() {
    interrupt(nix::sys::signal::Signal::SIGINT, true);
}

#[test]
fn a_kill_cleans_up_even_when_nobody_reads_stderr_any_more() {
    // The process that read its stderr is gone (a closed terminal, a killed pipeline): the
    // signal thread's messages fail, and the clean-up must happen all the same.
    interrupt(nix::sys::signal::Signal::SIGTERM, false);
}

/// Starts a quick experiment, waits until it has a swapfile and is measuring, sends `sig`
/// (with its stderr closed first unless `read_stderr`), and checks it exits 128 + `sig`
/// with its swapfile and cgroups gone.
fn interrupt(sig: nix::sys::signal::Signal, read_stderr: bool) {
    let pieces = [Piece::Kvm, Piece::Uffd, Piece::Swap, Piece::CgroupV1Memory];
    if !require_all(&pieces, "experiment_swap") {
        return;
    }
    let _one = SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let tag = if read_stderr { "int" } else { "term" };
    let (out, dir) = (
        scratch(&format!("{tag}-out")),
        scratch(&format!("{tag}-files")),
    );
    let mut child = experiment(&out, &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running memout");
    let _undo = Undo {
        pid: child.id(),
        scratch: &dir,
        out: &out,
    };
    let t = Instant::now();
    while leftovers(&dir).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no swapfile appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the experiment ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if !read_stderr {
        drop(child.stderr.take());
    }
    // Let it get into a measurement, then interrupt it.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{sig} did not end the experiment within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        assert!(err.contains("removing swapfile"), "{err}");
    }
    assert_eq!(status.code(), Some(128 + sig as i32), "{err}");
    assert_eq!(leftovers(&dir), Vec::<String>::new(), "{err}");
    assert_eq!(cgroups_of(child.id()), Vec::<String>::new(), "{err}");
}
