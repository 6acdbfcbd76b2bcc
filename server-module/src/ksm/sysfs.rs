//! KSM's system-wide knobs and counters (`/sys/kernel/mm/ksm`): read them, and set the three
//! knobs memout's controller changes (`run`, `pages_to_scan`, `sleep_millisecs`). The root is
//! a parameter, so the controller can be tested against a directory of plain files.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where the kernel puts KSM's files.
pub const SYSTEM_ROOT: &str = "/sys/kernel/mm/ksm";

/// Why KSM's files could not be used.
#[derive(Debug, Error)]
pub enum Error {
    /// The kernel has no KSM (or the root is wrong).
    #[error("KSM is not available: {0} does not exist (kernel without CONFIG_KSM?)")]
    Missing(PathBuf),
    /// A knob cannot be written (not root, or sysfs mounted read-only).
    #[error("cannot change KSM's {path}: {source} (memout must run as root with sysfs writable)")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed otherwise.
    #[error("KSM file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file held something that is not a number.
    #[error("KSM file {path} holds {text:?}, not a number")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        text: String,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The knobs memout's controller sets, and restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KsmSettings {
    /// `run`: 0 stopped, 1 running, 2 unmerging everything.
    pub run: u32,
    /// `pages_to_scan`: pages per wake-up of ksmd.
    pub pages_to_scan: u32,
    /// `sleep_millisecs`: ksmd's sleep between wake-ups.
    pub sleep_millisecs: u32,
}

impl KsmSettings {
    /// As lines of `name value`, the saved-settings file format.
    pub fn to_text(&self) -> String {
        format!(
            "run {}\npages_to_scan {}\nsleep_millisecs {}\n",
            self.run, self.pages_to_scan, self.sleep_millisecs
        )
    }

    /// Parses [`to_text`](Self::to_text); `None` if a line is missing or malformed.
    pub fn from_text(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Self {
            run: get("run")?,
            pages_to_scan: get("pages_to_scan")?,
            sleep_millisecs: get("sleep_millisecs")?,
        })
    }
}

/// KSM's system-wide counters. Those a kernel may lack are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KsmCounters {
    /// Pages KSM keeps one copy of.
    pub pages_shared: u64,
    /// Mappings of those pages beyond the first: the pages saved.
    pub pages_sharing: u64,
    /// Pages scanned but unique so far.
    pub pages_unshared: u64,
    /// Pages changing too fast to merge.
    pub pages_volatile: u64,
    /// Complete passes over all mergeable memory.
    pub full_scans: u64,
    /// Bytes saved minus KSM's own metadata (Linux ≥ 6.1).
    pub general_profit: Option<i64>,
    /// Zero pages merged with the kernel's zero page (Linux ≥ 6.4, `use_zero_pages`).
    pub ksm_zero_pages: Option<u64>,
}

/// KSM's files under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsmSysfs {
    root: PathBuf,
}

impl KsmSysfs {
    /// The kernel's ([`SYSTEM_ROOT`]).
    pub fn system() -> Self {
        Self::at(SYSTEM_ROOT)
    }

    /// Files under `root` (tests: a directory of plain files).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, name: &str) -> Result<Option<String>> {
        let path = self.root.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.root.is_dir() {
                    Ok(None)
                } else {
                    Err(Error::Missing(self.root.clone()))
                }
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        let Some(text) = self.read(name)? else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(|_| Error::Parse {
            path: self.root.join(name),
            text,
        })
    }

    fn required<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        self.number(name)?
            .ok_or_else(|| Error::Missing(self.root.join(name)))
    }

    /// The counters now.
    pub fn counters(&self) -> Result<KsmCounters> {
        Ok(KsmCounters {
            pages_shared: self.required("pages_shared")?,
            pages_sharing: self.required("pages_sharing")?,
            pages_unshared: self.required("pages_unshared")?,
            pages_volatile: self.required("pages_volatile")?,
            full_scans: self.required("full_scans")?,
            general_profit: self.number("general_profit")?,
            ksm_zero_pages: self.number("ksm_zero_pages")?,
        })
    }

    /// The knobs now.
    pub fn settings(&self) -> Result<KsmSettings> {
        Ok(KsmSettings {
            run: self.required("run")?,
            pages_to_scan: self.required("pages_to_scan")?,
            sleep_millisecs: self.required("sleep_millisecs")?,
        })
    }

    fn write(&self, name: &str, value: u32) -> Result<()> {
        let path = self.root.join(name);
        std::fs::write(&path, format!("{value}\n")).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Error::ReadOnly { path, source }
            }
            std::io::ErrorKind::NotFound => Error::Missing(path),
            _ => Error::Io { path, source },
        })
    }

    /// Sets the knobs (scan rate first, then `run`).
    pub fn apply(&self, s: &KsmSettings) -> Result<()> {
        self.write("pages_to_scan", s.pages_to_scan)?;
        self.write("sleep_millisecs", s.sleep_millisecs)?;
        self.write("run", s.run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that looks like KSM's, removed when dropped.
    pub(crate) struct FakeKsm(pub PathBuf);

    impl FakeKsm {
        pub(crate) fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("memout-fake-ksm-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for (f, v) in [
                ("run", "0"),
                ("pages_to_scan", "100"),
                ("sleep_millisecs", "20"),
                ("pages_shared", "7"),
                ("pages_sharing", "21"),
                ("pages_unshared", "3"),
                ("pages_volatile", "1"),
                ("full_scans", "2"),
                ("general_profit", "-4096"),
            ] {
                std::fs::write(dir.join(f), format!("{v}\n")).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for FakeKsm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_counters_and_sets_knobs() {
        let f = FakeKsm::new("rw");
        let k = KsmSysfs::at(&f.0);
        let c = k.counters().unwrap();
        assert_eq!((c.pages_shared, c.pages_sharing, c.full_scans), (7, 21, 2));
        assert_eq!((c.general_profit, c.ksm_zero_pages), (Some(-4096), None));
        let s = KsmSettings {
            run: 1,
            pages_to_scan: 1250,
            sleep_millisecs: 10,
        };
        k.apply(&s).unwrap();
        assert_eq!(k.settings().unwrap(), s);
        assert_eq!(KsmSettings::from_text(&s.to_text()), Some(s));
        assert_eq!(KsmSettings::from_text("run 1\n"), None);
    }

    #[test]
    fn says_what_is_missing_or_wrong() {
        let k = KsmSysfs::at("/nonexistent/ksm");
        assert!(
            matches!(k.counters(), Err(Error::Missing(p)) if p == Path::new("/nonexistent/ksm"))
        );
        let f = FakeKsm::new("bad");
        std::fs::write(f.0.join("pages_shared"), "lots\n").unwrap();
        std::fs::remove_file(f.0.join("full_scans")).unwrap();
        let k = KsmSysfs::at(&f.0);
        assert!(matches!(k.counters(), Err(Error::Parse { text, .. }) if text == "lots"));
        std::fs::write(f.0.join("pages_shared"), "1\n").unwrap();
        assert!(matches!(k.counters(), Err(Error::Missing(p)) if p.ends_with("full_scans")));
    }
}
