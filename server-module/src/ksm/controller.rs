//! The KSM controller: while memout wants KSM `on` or `auto` it owns ksmd's knobs, and when it
//! is turned `off` (or dropped, or its owner dies: see [`super::guard`]) the system gets the
//! settings it had before back. `auto` re-decides every interval with [`super::tuner`].

use super::guard::{self, Guard};
use super::sysfs::{self, KsmSettings, KsmSysfs};
use super::tuner::{self, Decision, HostMemory, TunerParams};
use parking_lot::{Condvar, Mutex};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;

/// What the controller does with ksmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KsmMode {
    /// Hands off: the system's own settings (restored if the controller had changed them).
    Off,
    /// ksmd runs at [`ControllerConfig::on`]'s rate.
    On,
    /// ksmtuned's policy: run and scale the scan rate with memory pressure, stop without it.
    Auto,
}

/// Why the controller could not do what it was asked.
#[derive(Debug, Error)]
pub enum Error {
    /// KSM's files.
    #[error(transparent)]
    Sysfs(#[from] sysfs::Error),
    /// The saved settings could not be written, or restored.
    #[error(transparent)]
    Guard(#[from] guard::Error),
    /// Saving the settings before the first change failed.
    #[error("cannot save KSM's settings to {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The guard process or the `auto` thread could not start.
    #[error("cannot start the KSM {what}: {source}")]
    Spawn {
        /// Which.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How the controller is set up.
#[derive(Debug)]
pub struct ControllerConfig {
    /// KSM's files.
    pub sysfs: KsmSysfs,
    /// `auto`'s policy.
    pub tuner: TunerParams,
    /// `on`'s scan rate: pages per wake-up and sleep in ms (default 1250 pages / 20 ms, the
    /// top of ksmtuned's range).
    pub on: (u32, u32),
    /// Where the settings found before the first change are kept until restored.
    pub saved_path: PathBuf,
    /// The guard process to start at the first change (see [`super::guard`]); `None` for
    /// none (a SIGKILL then leaves the knobs as memout set them).
    pub guard: Option<Command>,
}

impl ControllerConfig {
    /// The kernel's KSM, ksmtuned's policy, settings saved in the temporary directory, no
    /// guard.
    pub fn system() -> Self {
        Self {
            sysfs: KsmSysfs::system(),
            tuner: TunerParams::default(),
            on: (1250, 20),
            saved_path: std::env::temp_dir()
                .join(format!("memout-ksm-saved-{}", std::process::id())),
            guard: None,
        }
    }
}

/// What the controller is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStatus {
    /// The mode.
    pub mode: KsmMode,
    /// The settings it will restore, while it holds the knobs.
    pub saved: Option<KsmSettings>,
    /// `auto`'s latest decision.
    pub last: Option<Decision>,
    /// `auto`'s latest failure, if its last pass failed.
    pub error: Option<String>,
}

struct State {
    mode: KsmMode,
    saved: Option<KsmSettings>,
    guard: Option<Guard>,
    last: Option<Decision>,
    error: Option<String>,
    stop: bool,
}

struct Shared {
    sysfs: KsmSysfs,
    tuner: TunerParams,
    on: (u32, u32),
    saved_path: PathBuf,
    guard_cmd: Mutex<Option<Command>>,
    /// KiB the guests may use (`auto`'s committed memory).
    committed: Box<dyn Fn() -> u64 + Send + Sync>,
    state: Mutex<State>,
    wake: Condvar,
}

/// The controller. Dropping it turns it `off`.
pub struct KsmController {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KsmController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KsmController")
            .field("status", &self.status())
            .finish()
    }
}

impl KsmController {
    /// A controller in mode `off`; `committed` tells `auto` how much memory the guests may
    /// use, in KiB.
    pub fn new(cfg: ControllerConfig, committed: Box<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self {
            shared: Arc::new(Shared {
                sysfs: cfg.sysfs,
                tuner: cfg.tuner,
                on: cfg.on,
                saved_path: cfg.saved_path,
                guard_cmd: Mutex::new(cfg.guard),
                committed,
                state: Mutex::new(State {
                    mode: KsmMode::Off,
                    saved: None,
                    guard: None,
                    last: None,
                    error: None,
                    stop: false,
                }),
                wake: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// KSM's files.
    pub fn sysfs(&self) -> &KsmSysfs {
        &self.shared.sysfs
    }

    /// What it is doing.
    pub fn status(&self) -> ControllerStatus {
        let st = self.shared.state.lock();
        ControllerStatus {
            mode: st.mode,
            saved: st.saved,
            last: st.last,
            error: st.error.clone(),
        }
    }

    /// Switches mode. The first switch away from `off` saves the system's settings (and
    /// starts the guard); `off` restores them.
    pub fn set_mode(&self, mode: KsmMode) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.state.lock();
        if mode == KsmMode::Off {
            st.mode = KsmMode::Off;
            st.last = None;
            return sh.restore(&mut st);
        }
        if st.saved.is_none() {
            let now = sh.sysfs.settings()?;
            guard::save(&sh.saved_path, &now).map_err(|source| Error::Save {
                path: sh.saved_path.clone(),
                source,
            })?;
            if let Some(cmd) = sh.guard_cmd.lock().take() {
                let g = Guard::spawn(cmd).map_err(|source| Error::Spawn {
                    what: "guard",
                    source,
                })?;
                st.guard = Some(g);
            }
            st.saved = Some(now);
        }
        st.mode = mode;
        match mode {
            KsmMode::On => sh.sysfs.apply(&KsmSettings {
                run: 1,
                pages_to_scan: sh.on.0,
                sleep_millisecs: sh.on.1,
            })?,
            KsmMode::Auto => {
                drop(st);
                self.start_thread()?;
                sh.wake.notify_all();
            }
            KsmMode::Off => unreachable!(),
        }
        Ok(())
    }

    fn start_thread(&self) -> Result<()> {
        let mut t = self.thread.lock();
        if t.is_none() {
            let sh = self.shared.clone();
            *t = Some(
                std::thread::Builder::new()
                    .name("memout-ksm".into())
                    .spawn(move || sh.run())
                    .map_err(|source| Error::Spawn {
                        what: "auto thread",
                        source,
                    })?,
            );
        }
        Ok(())
    }
}

impl Shared {
    fn restore(&self, st: &mut State) -> Result<()> {
        if st.saved.is_none() {
            return Ok(());
        }
        guard::restore(&self.sysfs, &self.saved_path)?;
        st.saved = None;
        if let Some(g) = st.guard.take() {
            g.release();
        }
        Ok(())
    }

    /// `auto`: decide, apply, sleep an interval (or until woken), again.
    fn run(&self) {
        let mut st = self.state.lock();
        while !st.stop {
            if st.mode == KsmMode::Auto {
                match self.auto_pass(st.last) {
                    Ok(d) => {
                        st.last = Some(d);
                        st.error = None;
                    }
                    Err(e) => {
                        tracing::warn!(%e, "KSM auto pass failed");
                        st.error = Some(e.to_string());
                    }
                }
            }
            self.wake.wait_for(&mut st, self.tuner.interval);
        }
    }

    fn auto_pass(&self, last: Option<Decision>) -> Result<Decision> {
        let mem = host_memory(self.committed.as_ref()())?;
        let pages_now = match last {
            Some(d) => d.pages_to_scan,
            None => self.sysfs.settings()?.pages_to_scan,
        };
        let d = tuner::decide(&self.tuner, mem, pages_now);
        self.sysfs.apply(&KsmSettings {
            run: d.run as u32,
            pages_to_scan: d.pages_to_scan,
            sleep_millisecs: d.sleep_millisecs,
        })?;
        Ok(d)
    }
}

/// `/proc/meminfo`'s total and available memory, with `committed` KiB.
fn host_memory(committed_kib: u64) -> Result<HostMemory> {
    let text = crate::procfs::meminfo().map_err(|source| {
        Error::Sysfs(sysfs::Error::Io {
            path: "/proc/meminfo".into(),
            source,
        })
    })?;
    let kib = |key| crate::procfs::parse_meminfo_kib(&text, key);
    Ok(HostMemory {
        total_kib: kib("MemTotal"),
        free_kib: kib("MemAvailable"),
        committed_kib,
    })
}

impl Drop for KsmController {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock();
            st.stop = true;
            st.mode = KsmMode::Off;
            if let Err(e) = self.shared.restore(&mut st) {
                tracing::error!(%e, "could not restore KSM's settings");
            }
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
