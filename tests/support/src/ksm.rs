//! Tests that touch KSM's system-wide knobs take [`KsmState`] first: one such test at a time
//! across all test processes (a file lock), and the knobs it found put back when it ends, also
//! when it fails.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::Path;

/// KSM's sysfs directory.
pub const ROOT: &str = "/sys/kernel/mm/ksm";
/// The knobs a test may change.
const KNOBS: [&str; 3] = ["run", "pages_to_scan", "sleep_millisecs"];

/// The lock and the knobs as found; restores them when dropped.
pub struct KsmState {
    saved: Vec<(&'static str, String)>,
    _lock: Flock<File>,
}

impl KsmState {
    /// Waits for other KSM tests to end, then saves the knobs.
    pub fn take() -> Self {
        let f = File::create(std::env::temp_dir().join("memout-ksm-tests.lock"))
            .expect("creating the KSM test lock");
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("locking the KSM test lock");
        let saved = KNOBS.iter().map(|k| (*k, read(k))).collect();
        Self { saved, _lock: lock }
    }

    /// The value of `knob` when the test began.
    pub fn saved(&self, knob: &str) -> &str {
        self.saved
            .iter()
            .find(|(k, _)| *k == knob)
            .map(|(_, v)| v.as_str())
            .expect("a knob this saves")
    }
}

/// A KSM file's value, trimmed.
pub fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(name))
        .unwrap_or_else(|e| panic!("reading KSM's {name}: {e}"))
        .trim()
        .to_string()
}

/// Sets a KSM knob.
pub fn write(name: &str, value: &str) {
    std::fs::write(Path::new(ROOT).join(name), value)
        .unwrap_or_else(|e| panic!("setting KSM's {name} to {value}: {e}"));
}

/// `run`, `pages_to_scan` and `sleep_millisecs` now.
pub fn knobs() -> (String, String, String) {
    (read("run"), read("pages_to_scan"), read("sleep_millisecs"))
}

/// Sets the knobs to values no default has (ksmd stopped, 77 pages, 33 ms), so a restore is
/// unmistakable; returns them.
pub fn set_distinct() -> (String, String, String) {
    write("pages_to_scan", "77");
    write("sleep_millisecs", "33");
    write("run", "0");
    knobs()
}

impl Drop for KsmState {
    fn drop(&mut self) {
        // Rate first, `run` last, as the controller does.
        for (k, v) in self.saved.iter().rev() {
            let _ = std::fs::write(Path::new(ROOT).join(k), v);
        }
    }
}
