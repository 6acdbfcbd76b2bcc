//! Running a Linux guest under QEMU's software emulation for memout: builds the test guest
//! image (Debian's cloud kernel, a busybox initramfs with `memout.ko`), starts
//! `qemu-system-x86_64 -accel tcg` with a [`QemuGuest`]'s options, and follows its console
//! line by line, each line stamped with the time it arrived.

use super::QemuGuest;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// vCPUs the guest may have (`-smp 1,maxcpus=2`: one runs). Above 1 so that TCG, multi-threaded,
/// makes the guest's atomic instructions real host atomics, which the fast path needs against
/// memout's thread; serve the guest with this as
/// [`fastpath_cpus`](super::QemuGuestConfig::fastpath_cpus).
pub const MAX_CPUS: u32 = 2;

/// The script that builds the guest image.
pub const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest-driver-c/linux/guest/build-image.sh"
);

/// Errors running a Linux guest.
#[derive(Debug, Error)]
pub enum Error {
    /// The image script failed.
    #[error("building the Linux guest image failed ({status}): {stderr}")]
    Build {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its error output.
        stderr: String,
    },
    /// A process could not be started.
    #[error("cannot run {what}: {source}")]
    Spawn {
        /// Which program.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The console did not show the line in time.
    #[error("no console line starting {prefix:?} within {timeout:?}; last lines:\n{tail}")]
    Timeout {
        /// What was awaited.
        prefix: String,
        /// How long.
        timeout: Duration,
        /// The console's last lines.
        tail: String,
    },
    /// QEMU exited before the line appeared.
    #[error("QEMU ended before a console line starting {prefix:?}; last lines:\n{tail}")]
    Ended {
        /// What was awaited.
        prefix: String,
        /// The console's last lines.
        tail: String,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The built guest image.
#[derive(Debug, Clone)]
pub struct LinuxImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

impl LinuxImage {
    /// Builds (or finds cached) the test guest image under `out`.
    pub fn build(out: &Path) -> Result<Self> {
        let o = Command::new("bash")
            .arg(BUILD_SCRIPT)
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| Error::Spawn {
                what: "the image script",
                source,
            })?;
        if !o.status.success() {
            let s = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = s.lines().rev().take(15).collect();
            return Err(Error::Build {
                status: o.status,
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(Self {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.cpio.gz"),
        })
    }
}

/// A running QEMU and its console.
pub struct Qemu {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Qemu {
    /// Boots `image` with `guest`'s RAM and channel; `append` is added to the kernel command
    /// line (e.g. `memout_test=free,256,3`).
    pub fn boot(guest: &QemuGuest, image: &LinuxImage, append: &str) -> Result<Self> {
        Self::boot_with(&guest.qemu_args(), image, append)
    }

    /// Boots `image` with the given QEMU options for RAM and devices (a baseline's).
    pub fn boot_with(args: &[String], image: &LinuxImage, append: &str) -> Result<Self> {
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &format!("1,maxcpus={MAX_CPUS}"), "-no-reboot"])
            .args(["-nodefaults", "-serial", "stdio", "-display", "none"])
            .args(args)
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 rdinit=/init quiet {append}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| Error::Spawn {
                what: "qemu-system-x86_64",
                source,
            })?;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    fn tail(&self) -> String {
        let n = self.seen.len().saturating_sub(25);
        self.seen[n..].join("\n")
    }

    /// Waits for a console line that starts with `prefix`; returns when it arrived and the line.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<(Instant, String)> {
        self.wait_for(prefix, timeout, |l| l.starts_with(prefix))
    }

    /// Waits for a console line that contains `text` anywhere (kernel messages start with a
    /// timestamp); returns when it arrived and the line.
    pub fn wait_text(&mut self, text: &str, timeout: Duration) -> Result<(Instant, String)> {
        self.wait_for(text, timeout, |l| l.contains(text))
    }

    fn wait_for(
        &mut self,
        prefix: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String)> {
        let end = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok((t, line)) => {
                    let line = line.trim_end_matches('\r').to_string();
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok((t, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        prefix: prefix.into(),
                        timeout,
                        tail: self.tail(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Ended {
                        prefix: prefix.into(),
                        tail: self.tail(),
                    });
                }
            }
        }
    }

    /// QEMU's process id (to read its memory figures in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every console line seen so far.
    pub fn console(&self) -> &[String] {
        &self.seen
    }

    /// Waits for QEMU to exit (the guest powers off), killing it after `timeout`; the console
    /// then ends with a line saying so.
    pub fn finish(mut self, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok((_, l)) => self.seen.push(l.trim_end_matches('\r').to_string()),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.seen.push(format!(
                        "memout: QEMU killed, still running after {timeout:?}"
                    ));
                    break;
                }
            }
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
