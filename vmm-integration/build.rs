//! Builds every guest program in `guest-driver-c/guests/*.c` into a flat image with gcc:
//! freestanding, no libc, linked at 2 MiB by `runtime/guest.ld`, then `objcopy -O binary`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(st.success(), "guest build step failed: {cmd:?}");
}

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../guest-driver-c");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let cc = std::env::var("MEMOUT_GUEST_CC").unwrap_or_else(|_| "gcc".into());
    let objcopy = std::env::var("MEMOUT_GUEST_OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=MEMOUT_GUEST_CC");
    let common = [
        root.join("runtime/start.S"),
        root.join("runtime/runtime.c"),
        root.join("src/memout.c"),
    ];
    let mut guests: Vec<PathBuf> = std::fs::read_dir(root.join("guests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    guests.sort();
    let mut list = String::new();
    for g in &guests {
        let name = g.file_stem().unwrap().to_str().unwrap().to_string();
        let elf = out.join(format!("{name}.elf"));
        let bin = out.join(format!("{name}.bin"));
        run(Command::new(&cc)
            .args([
                "-std=gnu11",
                "-O2",
                "-g",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-ffreestanding",
                "-nostdlib",
                "-nostartfiles",
                "-static",
                "-fno-pic",
                "-no-pie",
                "-mno-red-zone",
                "-mgeneral-regs-only",
                "-fno-stack-protector",
                "-fno-asynchronous-unwind-tables",
                "-fcf-protection=none",
                "-fno-tree-loop-distribute-patterns",
                "-Wl,--build-id=none",
                "-Wl,-z,noexecstack",
                "-Wl,--no-warn-rwx-segments",
            ])
            .arg("-I")
            .arg(root.join("include"))
            .arg("-T")
            .arg(root.join("runtime/guest.ld"))
            .args(&common)
            .arg(g)
            .arg("-o")
            .arg(&elf));
        run(Command::new(&objcopy)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin));
        list += &format!("    ({name:?}, include_bytes!({:?})),\n", path_str(&bin));
    }
    std::fs::write(
        out.join("guest_images.rs"),
        format!("/// Every guest image built from `guest-driver-c/guests`, by name.\npub const ALL: &[(&str, &[u8])] = &[\n{list}];\n"),
    )
    .unwrap();
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 OUT_DIR").to_string()
}
