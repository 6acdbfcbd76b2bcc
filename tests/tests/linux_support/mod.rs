//! What the Linux-guest test files share: the cached guest image and a served QEMU guest.

use memout_vmm::qemu::launch::LinuxImage;
use memout_vmm::qemu::{QemuGuest, QemuGuestConfig};
use std::path::PathBuf;
use std::sync::Mutex;

/// A mebibyte.
pub const MIB: u64 = 1 << 20;

/// One image build at a time (a file's tests run in parallel threads; the build script also
/// takes a file lock, for test binaries running at once).
static IMAGE: Mutex<Option<LinuxImage>> = Mutex::new(None);

/// The guest image (kernel, initramfs with the module), built once under `target/`.
pub fn image() -> LinuxImage {
    let mut g = IMAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = &*g {
        return i.clone();
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/linux-guest");
    let i = LinuxImage::build(&out).expect("building the Linux guest image");
    *g = Some(i.clone());
    i
}

/// A QEMU guest of `ram` bytes served by memout, RAM in `/dev/shm`, pinned at 64 MiB.
pub fn guest(name: &str, ram: u64) -> QemuGuest {
    let socket = std::env::temp_dir().join(format!("memout-{name}-{}.sock", std::process::id()));
    QemuGuest::start(&QemuGuestConfig {
        name: name.into(),
        ram_bytes: ram,
        ram_dir: "/dev/shm".into(),
        socket,
        min_bytes: 64 * MIB,
        fastpath_cpus: memout_vmm::qemu::launch::MAX_CPUS,
    })
    .expect("serving the QEMU guest")
}

/// Checks that the console has each of `wants` somewhere.
pub fn expect_lines(console: &str, wants: &[&str]) {
    for want in wants {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
}
