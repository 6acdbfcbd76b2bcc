//! `memout.ko` follows kernel style: the kernel's own checkpatch.pl (`--strict`, from Debian's
//! linux-source package, fetched once with apt) finds nothing in its sources.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_module_is_checkpatch_clean() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("guest-driver-c/linux/checkpatch.sh"))
        .arg(root.join("target/checkpatch"))
        .output()
        .expect("running checkpatch.sh");
    assert!(
        out.status.success(),
        "checkpatch (or fetching it) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
