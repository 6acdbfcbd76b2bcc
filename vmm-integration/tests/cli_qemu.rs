//! `memout qemu -- <QEMU arguments>`: memout serves a Linux guest it started under QEMU, until
//! QEMU exits, and says what the guest gave back.

use memout_test_support::{Piece, require};
use memout_vmm::qemu::launch::LinuxImage;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn memout_qemu_serves_the_guest_it_starts() {
    if !require(Piece::Qemu, "cli_qemu") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let image = LinuxImage::build(&root.join("target/linux-guest")).expect("guest image");
    let socket = std::env::temp_dir().join(format!("memout-cli-{}.sock", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_memout"))
        .args(["qemu", "--name", "clitest", "--ram", "512M", "--socket"])
        .arg(&socket)
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
        .args([
            "-nodefaults",
            "-serial",
            "stdio",
            "-display",
            "none",
            "-kernel",
        ])
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init quiet memout_test=free,64,1",
        ])
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
