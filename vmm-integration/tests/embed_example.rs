//! `examples/embed.rs` is built by `cargo test`; run it and check the guest verified its data.

use std::process::Command;

#[test]
fn embed_example_runs_the_demo() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let example = dir.join("embed");
    assert!(example.exists(), "{} not built", example.display());
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("SKIPPED: no /dev/kvm") {
        eprintln!("SKIPPED: no /dev/kvm (embed example)");
        assert_ne!(std::env::var("MEMOUT_REQUIRE_KVM").as_deref(), Ok("1"));
        return;
    }
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo: PASS"), "{stdout}");
    assert!(stdout.contains("populated_eager_pages"), "{stdout}");
}
