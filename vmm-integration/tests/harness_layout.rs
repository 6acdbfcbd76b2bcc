//! Compiles `guest-driver-c/include/memout_harness.h` with gcc and checks that every harness
//! port and layout constant the guest programs see equals the VMM's (`layout`, `runner`).

use memout_vmm::layout;
use memout_vmm::runner;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let include = root.join("guest-driver-c/include");
    let exp = expectations();
    let mut src =
        String::from("#include <stdio.h>\n#include \"memout_harness.h\"\nint main(void) {\n");
    for (name, _) in &exp {
        src += &format!("  printf(\"%s=%llu\\n\", \"{name}\", (unsigned long long)({name}));\n");
    }
    src += "  return 0;\n}\n";
    let dir = std::env::temp_dir().join(format!("memout-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, exe) = (dir.join("harness.c"), dir.join("harness"));
    std::fs::write(&c, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let st = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed on memout_harness.h");
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let c: BTreeMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    let bad: Vec<String> = exp
        .iter()
        .filter(|(k, v)| c.get(k) != Some(v))
        .map(|(k, v)| format!("{k}: C {:?} vs Rust {v}", c.get(k)))
        .collect();
    assert!(bad.is_empty(), "harness mismatches:\n{}", bad.join("\n"));
    assert_eq!(c.len(), exp.len());
}
