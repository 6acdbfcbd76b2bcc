//! Shared helpers for memout's workspace-level integration tests, which run real KVM guests.
#![deny(missing_docs)]

/// True if KVM can be used. Otherwise prints a loud `SKIPPED` line, and panics if
/// `MEMOUT_REQUIRE_KVM=1` (set by `.ci/run` when `/dev/kvm` exists) so a broken KVM setup can
/// never pass silently.
pub fn kvm_or_skip(test: &str) -> bool {
    if std::fs::metadata("/dev/kvm").is_ok() && kvm_opens() {
        return true;
    }
    eprintln!("SKIPPED: no /dev/kvm ({test} needs KVM)");
    assert!(
        std::env::var("MEMOUT_REQUIRE_KVM").as_deref() != Ok("1"),
        "MEMOUT_REQUIRE_KVM=1 but /dev/kvm cannot be opened"
    );
    false
}

fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
