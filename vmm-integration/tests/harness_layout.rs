//! Compiles `guest-driver-c/include/memout_harness.h` with gcc and checks that every harness
//! port and layout constant the guest programs see equals the VMM's (`layout`, `runner`).

use memout_vmm::layout;
use memout_vmm::runner;
use std::path::PathBuf;

fn expectations() -> Vec<(&'static str, u64)> {
    vec![
        (
            "MEMOUT_HARNESS_PORT_CHECKPOINT",
            runner::PORT_CHECKPOINT as u64,
        ),
        ("MEMOUT_HARNESS_PORT_ARG", runner::PORT_ARG as u64),
        (
            "MEMOUT_HARNESS_PORT_EVICT_ALL",
            runner::PORT_EVICT_ALL as u64,
        ),
        ("MEMOUT_HARNESS_PORT_FINISH", runner::PORT_FINISH as u64),
        ("MEMOUT_HARNESS_PORT_FLAGS", runner::PORT_FLAGS as u64),
        ("MEMOUT_HARNESS_PORT_PARAM", runner::PORT_PARAM as u64),
        ("MEMOUT_HARNESS_PORT_SLEEP", runner::PORT_SLEEP as u64),
        ("MEMOUT_HARNESS_BOOT_SIZE", layout::BOOT_SIZE),
        ("MEMOUT_HARNESS_RING_GPA", layout::RING),
        ("MEMOUT_HARNESS_RING_SLOTS", layout::RING_SLOTS as u64),
        ("MEMOUT_HARNESS_IMAGE_BASE", layout::IMAGE_BASE),
        ("MEMOUT_HARNESS_IMAGE_LIMIT", layout::IMAGE_LIMIT),
        ("MEMOUT_HARNESS_REGION_GPA", layout::REGION_GPA),
    ]
}

#[test]
fn c_harness_header_matches_the_vmm() {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-driver-c/include");
    memout_test_support::assert_c_header_matches(&include, "memout_harness.h", &expectations());
}
