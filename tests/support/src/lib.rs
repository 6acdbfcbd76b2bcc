//! # memout-test-support
//!
//! What memout's tests need from the host, checked one piece at a time. A test that lacks a
//! piece **fails**, naming it, unless the user opted out of that piece explicitly with
//! `MEMOUT_ALLOW_SKIP` (a comma-separated list such as `kvm,swap`, or `all`); then the test
//! prints one loud `SKIPPED` line and returns. A skip is only ever for the specific absence the
//! piece names, never for a generic error.
//!
//! ```text
//!  server-module/tests, vmm-integration/tests, tests/tests
//!        └── require(Piece::Kvm, "demo") ──▶ present? run : opted out? SKIPPED line : panic
//! ```
#![deny(missing_docs)]

pub mod ksm;
pub mod redis;
pub mod redis_cluster;
use std::fmt;

/// A piece of the host a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `/dev/kvm`, readable and writable.
    Kvm,
    /// userfaultfd that also reports faults the kernel takes on a process's behalf (KVM's):
    /// root, `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd=1`.
    Uffd,
    /// Running as root (becoming another uid, swapon, cgroups).
    Root,
    /// Making a swapfile: root and `mkswap`/`swapon` on the PATH.
    Swap,
    /// The cgroup v1 memory controller at `/sys/fs/cgroup/memory`.
    CgroupV1Memory,
    /// `qemu-system-x86_64` on the PATH (Linux guests run under QEMU's software emulation).
    Qemu,
    /// KSM's knobs in `/sys/kernel/mm/ksm`, writable (root, a kernel with CONFIG_KSM).
    Ksm,
    /// `redis-server` on the PATH (tests start their own on a loopback port).
    Redis,
}

impl Piece {
    /// The name used in `MEMOUT_ALLOW_SKIP`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Uffd => "uffd",
            Self::Root => "root",
            Self::Swap => "swap",
            Self::CgroupV1Memory => "cgroup-v1",
            Self::Qemu => "qemu",
            Self::Ksm => "ksm",
            Self::Redis => "redis",
        }
    }

    /// Whether this host has the piece.
    pub fn present(self) -> bool {
        match self {
            Self::Kvm => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            Self::Uffd => uffd_with_kernel_faults(),
            Self::Root => is_root(),
            Self::Swap => is_root() && on_path("mkswap") && on_path("swapon"),
            Self::CgroupV1Memory => {
                std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
            }
            Self::Qemu => on_path("qemu-system-x86_64"),
            Self::Ksm => is_root() && std::path::Path::new(ksm::ROOT).join("run").exists(),
            Self::Redis => on_path("redis-server"),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Kvm => "/dev/kvm cannot be opened read-write",
            Self::Uffd => {
                "userfaultfd with kernel faults is not permitted (run as root, or set vm.unprivileged_userfaultfd=1)"
            }
            Self::Root => "not running as root",
            Self::Swap => "cannot make a swapfile (needs root, mkswap and swapon)",
            Self::CgroupV1Memory => "no cgroup v1 memory controller at /sys/fs/cgroup/memory",
            Self::Qemu => {
                "no qemu-system-x86_64 on the PATH (apt install qemu-system-x86, or make deps)"
            }
            Self::Ksm => "no writable /sys/kernel/mm/ksm (needs root and a kernel with KSM)",
            Self::Redis => "no redis-server on the PATH (apt install redis-server, or make deps)",
        }
    }
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// True if the user opted out of `piece` in `allow` (the value of `MEMOUT_ALLOW_SKIP`).
pub fn allowed_to_skip(piece: Piece, allow: Option<&str>) -> bool {
    allow.is_some_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|p| p == "all" || p == piece.name())
    })
}

/// What to do about a test's piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The piece is there: run the test.
    Run,
    /// Missing, and the user opted out of it: skip loudly.
    Skip,
    /// Missing, and no opt-out: fail naming it.
    Fail,
}

/// The decision for a piece that is `present` or not, given `MEMOUT_ALLOW_SKIP`'s value.
pub fn decide(piece: Piece, present: bool, allow: Option<&str>) -> Decision {
    if present {
        Decision::Run
    } else if allowed_to_skip(piece, allow) {
        Decision::Skip
    } else {
        Decision::Fail
    }
}

/// `true` if the host has `piece`: run the test. If not, and the user opted out of it in
/// `MEMOUT_ALLOW_SKIP`, prints one loud line and returns `false`: the test returns at once.
///
/// # Panics
/// If the piece is missing and the user did not opt out: the test fails, naming the piece.
pub fn require(piece: Piece, test: &str) -> bool {
    let allow = std::env::var("MEMOUT_ALLOW_SKIP").ok();
    match decide(piece, piece.present(), allow.as_deref()) {
        Decision::Run => true,
        Decision::Skip => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED ({test}): {} [MEMOUT_ALLOW_SKIP={}]",
                piece.what(),
                allow.unwrap_or_default()
            );
            false
        }
        Decision::Fail => panic!(
            "{test} needs {piece}: {}. Fix the host, or opt out explicitly with MEMOUT_ALLOW_SKIP={piece}",
            piece.what()
        ),
    }
}

/// [`require`] for several pieces at once.
pub fn require_all(pieces: &[Piece], test: &str) -> bool {
    pieces.iter().all(|p| require(*p, test))
}

/// Compiles a C program that includes `header` (from `include_dir`) and prints the value of
/// each of `checks`' C expressions, and asserts each equals its Rust value: how the ABI and
/// harness headers are held to the Rust definitions.
///
/// # Panics
/// If gcc (or `$CC`) fails, or any value differs (all differences are listed).
pub fn assert_c_header_matches(
    include_dir: &std::path::Path,
    header: &str,
    checks: &[(&str, u64)],
) {
    use std::fmt::Write as _;
    let mut src = format!(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"{header}\"\nint main(void) {{\n"
    );
    for (expr, _) in checks {
        let _ = writeln!(
            src,
            "  printf(\"%s=%llu\\n\", \"{expr}\", (unsigned long long)({expr}));"
        );
    }
    src += "  return 0;\n}\n";
    let stem = header.trim_end_matches(".h");
    let dir = std::env::temp_dir().join(format!("memout-{stem}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let (c, exe) = (dir.join("check.c"), dir.join("check"));
    std::fs::write(&c, src).expect("write the check program");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let st = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(include_dir)
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("run the C compiler");
    assert!(st.success(), "{cc} failed on {header}");
    let out = std::process::Command::new(&exe)
        .output()
        .expect("run the check program");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).expect("ASCII output");
    let c_values: std::collections::BTreeMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.parse().expect("a number")))
        .collect();
    let bad: Vec<String> = checks
        .iter()
        .filter(|(k, v)| c_values.get(k) != Some(v))
        .map(|(k, v)| format!("{k}: C {:?} vs Rust {v}", c_values.get(k)))
        .collect();
    assert!(
        bad.is_empty(),
        "{header} differs from Rust:\n{}",
        bad.join("\n")
    );
    assert_eq!(c_values.len(), checks.len());
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(Into::into))
        .any(|d| d.join(cmd).exists())
}

/// Creates a userfaultfd without `UFFD_USER_MODE_ONLY` (the flag memout must not set) and
/// closes it again.
fn uffd_with_kernel_faults() -> bool {
    // nix has no userfaultfd call; the raw syscall it is.
    // SAFETY: the userfaultfd syscall with O_CLOEXEC | O_NONBLOCK takes no pointers; on success
    // it returns a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    let Ok(fd) = std::os::fd::RawFd::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was opened just above and nothing else owns it; dropping closes it.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    true
}

/// Polls `f` every 20 ms until it holds; fails the test, naming `what`, after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_names_pieces_exactly() {
        assert!(allowed_to_skip(Piece::Kvm, Some("kvm,swap")));
        assert!(allowed_to_skip(Piece::Swap, Some("kvm, swap")));
        assert!(allowed_to_skip(Piece::Root, Some("all")));
        assert!(!allowed_to_skip(Piece::Root, Some("kvm,swap")));
        assert!(!allowed_to_skip(Piece::Kvm, Some("kvmx")));
        assert!(!allowed_to_skip(Piece::Kvm, None));
        assert!(!allowed_to_skip(Piece::Kvm, Some("")));
    }

    #[test]
    fn missing_pieces_fail_unless_opted_out() {
        assert_eq!(decide(Piece::Kvm, true, None), Decision::Run);
        assert_eq!(decide(Piece::Kvm, true, Some("kvm")), Decision::Run);
        assert_eq!(decide(Piece::Kvm, false, None), Decision::Fail);
        assert_eq!(decide(Piece::Kvm, false, Some("swap")), Decision::Fail);
        assert_eq!(decide(Piece::Kvm, false, Some("kvm")), Decision::Skip);
        assert_eq!(decide(Piece::Uffd, false, Some("all")), Decision::Skip);
    }
}
