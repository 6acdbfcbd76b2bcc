//! `memout qemu -- <QEMU arguments>`: memout serves a Linux guest it started under QEMU, until
//! QEMU exits, and says what the guest gave back.

use memout_test_support::{Piece, require};
use memout_vmm::qemu::launch::LinuxImage;
use std::path::PathBuf;
use std::process::Command;

/// The guest image, built once under `target/`.
fn image() -> LinuxImage {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    LinuxImage::build(&root.join("target/linux-guest")).expect("guest image")
}

/// `memout <memout_args> -- <QEMU options>`: QEMU under TCG boots the test image with `cmdline`
/// appended to its kernel command line.
fn memout_qemu(memout_args: &[&std::ffi::OsStr], cmdline: &str) -> Command {
    let image = image();
    let mut c = Command::new(env!("CARGO_BIN_EXE_memout"));
    c.args(memout_args)
        .args([
            "--",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-no-reboot",
        ])
        .args(["-nodefaults", "-serial", "stdio", "-display", "none"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init quiet {cmdline}"
        ));
    c
}

#[test]
fn memout_qemu_serves_the_guest_it_starts() {
    if !require(Piece::Qemu, "cli_qemu") {
        return;
    }
    let socket = std::env::temp_dir().join(format!("memout-cli-{}.sock", std::process::id()));
    let out = memout_qemu(
        &[
            "qemu".as_ref(),
            "--name".as_ref(),
            "clitest".as_ref(),
            "--ram".as_ref(),
            "512M".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ],
        "memout_test=free,64,1",
    )
    .output()
    .expect("running memout qemu");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "MEMOUT-GUEST: loaded",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: unloaded",
    ] {
        assert!(stdout.contains(want), "no {want:?} in\n{stdout}");
    }
    let line = stderr
        .lines()
        .find(|l| l.contains("MiB reported free"))
        .unwrap_or_else(|| panic!("no summary in\n{stderr}"));
    let reported: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" MiB reported free"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable summary {line:?}"));
    assert!(reported >= 64, "{line}");
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// Runs `memoutctl --socket <ctl> --json <args>`: its exit code and its JSON answer.
fn memoutctl(ctl: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memoutctl"))
        .arg("--socket")
        .arg(ctl)
        .arg("--json")
        .args(args)
        .output()
        .expect("running memoutctl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// `memout qemu --control`: the Linux guest is on the control socket, and `memoutctl` lists,
/// shows and resizes it (requested vs actual) while a guest program verifies its data; what
/// memout cannot do for a guest of QEMU is refused with its reason.
#[test]
fn memoutctl_resizes_a_linux_guest_served_by_memout_qemu() {
    use std::io::BufRead;
    if !require(Piece::Qemu, "cli_qemu") {
        return;
    }
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let socket = tmp.join(format!("memout-cli2-{pid}.sock"));
    let ctl = tmp.join(format!("memout-cli2-{pid}.ctl"));
    let mut child = memout_qemu(
        &[
            "qemu".as_ref(),
            "--name".as_ref(),
            "ctltest".as_ref(),
            "--ram".as_ref(),
            "512M".as_ref(),
            "--min".as_ref(),
            "128M".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--control".as_ref(),
            ctl.as_os_str(),
        ],
        "memout_test=hold,128,40 memout.expedite_ms=50",
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("running memout qemu");
    // The console, line by line, on a channel (and kept for the failure messages).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    let mut console = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !console
        .iter()
        .any(|l: &String| l.contains("MEMOUT-TEST: holding"))
    {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => console.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("the guest never held its memory:\n{}", console.join("\n"));
            }
        }
    }

    let (code, list, err) = memoutctl(&ctl, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list[0]["name"], "ctltest", "{list}");
    assert_eq!(list[0]["vmm"], "external", "{list}");
    assert_eq!(list[0]["requested_bytes"], 512u64 << 20, "{list}");

    let (code, shrink, err) = memoutctl(
        &ctl,
        &[
            "resize",
            "ctltest",
            "256M",
            "--wait",
            "--deadline-ms",
            "60000",
        ],
    );
    assert_eq!(code, 0, "{err} {shrink}");
    assert_eq!(shrink["phase"], "done", "{shrink}");
    assert!(
        shrink["allocated_bytes"].as_u64() <= Some(256 << 20),
        "{shrink}"
    );
    assert!(
        shrink["released_bytes"].as_u64() >= Some(250 << 20),
        "{shrink}"
    );
    let (code, status, err) = memoutctl(&ctl, &["status", "ctltest"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["requested_bytes"], 256u64 << 20, "{status}");
    assert!(
        status["resident_bytes"].as_u64() <= Some(256 << 20),
        "the RAM file followed: {status}"
    );
    let (code, _, err) = memoutctl(&ctl, &["evict", "ctltest", "16M"]);
    assert_eq!(code, 4, "refused: {err}");
    assert!(err.contains("external VMM"), "{err}");
    let (code, _, err) = memoutctl(&ctl, &["resize", "ctltest", "64M"]);
    assert_eq!(code, 4, "below the pinned minimum: {err}");
    let (code, grow, err) = memoutctl(&ctl, &["resize", "ctltest", "512M", "--wait"]);
    assert_eq!(code, 0, "{err} {grow}");
    assert_eq!(grow["phase"], "done", "{grow}");

    let status = child.wait().expect("memout qemu exits with QEMU");
    reader.join().expect("console reader");
    console.extend(rx.try_iter());
    let console = console.join("\n");
    let errors = errors.join().expect("stderr reader");
    assert!(status.success(), "{console}\n{errors}");
    assert!(errors.contains("control socket"), "{errors}");
    for want in [
        "MEMOUT-TEST: intact (0 bad words)",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: balloon_bytes 0",
        "MEMOUT-GUEST: unloaded",
    ] {
        assert!(console.contains(want), "no {want:?} in\n{console}");
    }
    assert!(!ctl.exists(), "the control socket is removed on exit");
}
