//! `memoutctl` against a running `memout run`, as the README shows it: tables, `--json`,
//! resizes that the guest follows, and exit codes that tell usage errors (2), connection
//! errors (3), refused requests (4) apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Guest {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True if KVM guests can run here; a missing piece fails the test unless opted out.
fn kvm_or_skip(test: &str) -> bool {
    memout_test_support::require_all(
        &[
            memout_test_support::Piece::Kvm,
            memout_test_support::Piece::Uffd,
        ],
        test,
    )
}

fn ctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memoutctl"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

fn json(sock: &Path, args: &[&str]) -> serde_json::Value {
    let (code, out, err) = ctl(sock, &[&["--json"], args].concat());
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn memoutctl_steers_a_running_guest() {
    if !kvm_or_skip("memoutctl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("memoutctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("ctl.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_memout"))
        .args([
            "run", "resizer", "--name", "vm1", "--region", "512M", "--quota", "64M",
        ])
        .args(["--min", "16M", "--eviction", "store", "--finish-after", "8"])
        .args(["--arg", &(32 | 1 << 17).to_string()])
        .arg("--store-dir")
        .arg(&dir)
        .arg("--control")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guest {
        child: Some(child),
        dir: dir.clone(),
    };
    // Until the guest holds its first 32 MiB.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = ctl(&sock, &["--json", "list"]);
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            if v[0]["allocated_bytes"].as_u64() >= Some(32 << 20) {
                break;
            }
        }
        assert!(Instant::now() < end, "guest never came up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (code, out, _) = ctl(&sock, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("NAME") && out.contains("vm1") && out.contains("running"),
        "{out}"
    );
    let (code, out, _) = ctl(&sock, &["status", "vm1"]);
    assert_eq!(code, 0);
    assert!(out.contains("requested") && out.contains("64.0M"), "{out}");

    // Grow, and the guest follows.
    let v = json(&sock, &["resize", "vm1", "128M", "--wait"]);
    assert_eq!(v["phase"], "done");
    let end = Instant::now() + Duration::from_secs(10);
    while json(&sock, &["status", "vm1"])["allocated_bytes"].as_u64() < Some(128 << 20) {
        assert!(Instant::now() < end, "guest did not grow");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Shrink: the guest releases.
    let v = json(&sock, &["resize", "vm1", "48M", "--wait"]);
    assert_eq!(v["phase"], "done", "{v}");
    assert!(v["released_bytes"].as_u64() >= Some(80 << 20), "{v}");
    assert!(v["resident_bytes"].as_u64() <= Some(48 << 20), "{v}");
    let (code, out, _) = ctl(&sock, &["resize", "vm1", "40M", "--wait"]);
    assert_eq!(code, 0);
    assert!(out.contains("48.0M → 40.0M: done"), "{out}");

    // Other requests.
    assert_eq!(json(&sock, &["policy", "vm1", "eager"])["ok"], true);
    assert_eq!(json(&sock, &["status", "vm1"])["policy"], "eager");
    assert_eq!(json(&sock, &["budget", "vm1", "32M"])["ok"], true);
    assert_eq!(json(&sock, &["status", "vm1"])["budget_bytes"], 32 << 20);
    assert_eq!(json(&sock, &["budget", "vm1", "none"])["ok"], true);
    assert!(json(&sock, &["evict", "vm1", "8M"])["evicted_bytes"].as_u64() > Some(0));

    // Refused requests: exit code 4, a clear message, nothing changed.
    for (args, needle) in [
        (&["resize", "vm1", "8M"][..], "pinned minimum"),
        (&["resize", "vm1", "1G"][..], "above the guest's region"),
        (&["resize", "vm1", "4097"][..], "multiple of 4 KiB"),
        (&["resize", "nope", "64M"][..], "no guest called"),
        (&["budget", "vm1", "0"][..], "must not be zero"),
    ] {
        let (code, _, err) = ctl(&sock, args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(json(&sock, &["status", "vm1"])["requested_bytes"], 40 << 20);
    // Usage errors: 2. Connection errors: 3.
    assert_eq!(ctl(&sock, &["resize", "vm1", "12Q"]).0, 2);
    assert_eq!(ctl(&sock, &["policy", "vm1", "fastest"]).0, 2);
    assert_eq!(ctl(&sock, &["frobnicate"]).0, 2);
    assert_eq!(ctl(&dir.join("nothing.sock"), &["list"]).0, 3);

    // The guest finishes on its own, having verified its data all along.
    let out = g.child.take().unwrap().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 bad pages"), "{stdout}");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn memout_run_refuses_a_socket_in_use_and_binds_nothing_for_a_refused_guest() {
    if !kvm_or_skip("memout run --control") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("memoutctl-inuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Guest {
        child: None,
        dir: dir.clone(),
    };
    let run = |sock: &Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_memout"))
            .args(["run", "demo", "--control"])
            .arg(sock)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A live server owns the path: refused, and its socket is left alone.
    let server = memout_server::Server::builder().build().unwrap();
    let live = dir.join("live.sock");
    let control = server.serve_control(&live).unwrap();
    let (ok, err) = run(&live, &[]);
    assert!(
        !ok && err.contains("in use") && err.contains("--no-control"),
        "{err}"
    );
    assert!(live.exists());
    drop(control);
    // A refused guest configuration never creates the socket.
    let fresh = dir.join("fresh.sock");
    let (ok, err) = run(&fresh, &["--quota", "8G", "--region", "4G"]);
    assert!(!ok && err.contains("quota"), "{err}");
    assert!(!fresh.exists());
}

/// `memoutctl segment add|list|rm`, `ksm status` and their refusals, against a live server's
/// socket (no guest needed: nothing here changes KSM's knobs).
#[test]
fn memoutctl_segments_and_ksm_status() {
    let dir = std::env::temp_dir().join(format!("memoutctl-seg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Guest {
        child: None,
        dir: dir.clone(),
    };
    let file = dir.join("lib.bin");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    let server = memout_server::Server::builder().build().unwrap();
    let sock = dir.join("ctl.sock");
    let _control = server.serve_control(&sock).unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(ctl(&sock, &["segment", "add", "lib", f]).0, 0);
    assert_eq!(ctl(&sock, &["segment", "add", "lib", f]).0, 4, "duplicate");
    assert_eq!(ctl(&sock, &["segment", "add", "a/b", f]).0, 4, "bad name");
    let list = json(&sock, &["segment", "list"]);
    assert_eq!(list[0]["name"], "lib");
    assert_eq!(list[0]["bytes"], 3 << 20);
    assert_eq!(list[0]["mapped_bytes"], 4 << 20, "rounded up to 2 MiB");
    let (code, out, _) = ctl(&sock, &["segment", "list"]);
    assert!(
        code == 0 && out.contains("lib") && out.contains("all"),
        "{out}"
    );
    let (code, out, _) = ctl(&sock, &["segment", "rm", "lib"]);
    assert!(code == 0 && out.contains("removed"), "{out}");
    assert_eq!(ctl(&sock, &["segment", "rm", "lib"]).0, 4, "gone");
    let k = json(&sock, &["ksm", "status"]);
    assert_eq!(k["mode"], "off");
    assert!(k["knobs"]["pages_to_scan"].is_u64(), "{k}");
    assert_eq!(ctl(&sock, &["ksm", "sideways"]).0, 2, "usage error");
    assert_eq!(ctl(&sock, &["mergeable", "nobody", "on"]).0, 4);
    assert_eq!(ctl(&sock, &["mergeable", "nobody", "maybe"]).0, 2);
}
