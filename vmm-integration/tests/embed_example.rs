//! `examples/embed.rs` is built by `cargo test`; run it and check the guest verified its data.

use std::process::Command;

#[test]
fn embed_example_runs_the_demo() {
    if !memout_test_support::require_all(
        &[
            memout_test_support::Piece::Kvm,
            memout_test_support::Piece::Uffd,
        ],
        "embed example",
    ) {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let example = dir.join("embed");
    assert!(example.exists(), "{} not built", example.display());
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo: PASS"), "{stdout}");
    assert!(stdout.contains("populated_eager_pages"), "{stdout}");
}
