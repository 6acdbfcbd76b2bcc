//! Runs one guest program to its end: a VM with the boot region, an outsourced region served
//! by a [`Server`], the vCPU loop dispatching exits, and a watchdog that stops the vCPU when
//! the server stops the guest or the run exceeds its time limit.

use crate::image::GuestImage;
use crate::layout::{BOOT_SIZE, REGION_GPA, RING, RING_SLOTS};
use crate::plain::{Discard, PlainRegion};
use crate::vcpu_kick::Kick;
use crate::vm::{self, GuestVm};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use kvm_ioctls::VcpuExit;
use memout_protocol::ring::{PORT_DEBUG_STR, PORT_DOORBELL, PORT_EXIT};
use memout_server::procfs::mapping_rss;
use memout_server::{
    ChannelConfig, GuestConfig, GuestFault, GuestHandle, GuestStatsSnapshot, PopulatePolicy, Server,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Harness port (not memout ABI): record a checkpoint (host time, region RSS, stats).
pub const PORT_CHECKPOINT: u16 = 0x520;
/// Harness port (not memout ABI): `in` returns the run's argument.
pub const PORT_ARG: u16 = 0x521;
/// Harness port (not memout ABI): evict everything the guest has resident, now, and record how
/// long it took (the guest is stopped meanwhile, on this exit).
pub const PORT_EVICT_ALL: u16 = 0x523;
/// Harness port (not memout ABI): `in` returns 1 once the host wants a long-running guest to
/// finish (see [`RunConfig::finish`]), else 0.
pub const PORT_FINISH: u16 = 0x524;
/// Harness port (not memout ABI): `in` returns [`RunConfig::flags`], a word a test or tool
/// changes while the guest runs (the `resizer` guest: bit 0 ignore release requests).
pub const PORT_FLAGS: u16 = 0x525;
/// Lines of guest output kept per run.
pub const MAX_OUTPUT_LINES: usize = 10_000;

/// Errors setting a run up (a guest misbehaving is an [`Outcome`], not an error).
#[derive(Debug, Error)]
pub enum Error {
    /// VM creation or configuration failed.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// The server refused the guest.
    #[error(transparent)]
    Server(#[from] memout_server::server::Error),
    /// The image could not be placed in boot memory.
    #[error("cannot load the guest image: {0}")]
    Load(#[source] vm_memory::GuestMemoryError),
    /// The plain (baseline) region could not be mapped or discarded.
    #[error("plain region: {0}")]
    PlainRegion(#[source] memout_server::host_mem::Error),
    /// The watchdog thread could not be started.
    #[error("cannot start the watchdog: {0}")]
    Watchdog(#[source] std::io::Error),
    /// The control socket could not be served.
    #[error("{0} (choose another path with --control, or --no-control)")]
    Control(#[from] memout_server::control::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How to run a guest.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Name for logs.
    pub name: String,
    /// Outsourced region size in bytes.
    pub region_size: u64,
    /// Quota in bytes.
    pub quota_bytes: u64,
    /// Population policy.
    pub policy: PopulatePolicy,
    /// Value the guest reads from [`PORT_ARG`].
    pub arg: u32,
    /// The run is stopped after this long.
    pub timeout: Duration,
    /// Print guest output lines to stdout as they arrive.
    pub echo: bool,
    /// What backs the region.
    pub backing: Backing,
    /// Called with the guest's handle before the vCPU first runs (memout backing only).
    pub setup: Option<GuestSetup>,
    /// Where evicted memory goes.
    pub eviction: memout_server::Eviction,
    /// Resident budget in bytes.
    pub budget_bytes: Option<u64>,
    /// The guest's pinned minimum in bytes (no resize goes below it).
    pub min_bytes: u64,
    /// Set it to ask the guest to finish (it reads [`PORT_FINISH`]).
    pub finish: Arc<AtomicBool>,
    /// A word the guest reads from [`PORT_FLAGS`] while it runs.
    pub flags: Arc<AtomicU32>,
    /// Serve the server's control socket here while the guest runs (bound once the guest has
    /// been accepted, so a refused configuration never touches the socket path).
    pub control: Option<std::path::PathBuf>,
}

/// A hook that sees the guest's handle before it runs (tests use it to inject faults).
#[derive(Clone)]
pub struct GuestSetup(pub Arc<dyn Fn(&GuestHandle) + Send + Sync>);

impl std::fmt::Debug for GuestSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestSetup(..)")
    }
}

/// What backs the guest's region at `REGION_GPA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// memout: the server allocates frames and backs them with userfaultfd.
    Memout,
    /// A plain anonymous memslot (kernel demand paging, the machine's THP default), no memout
    /// server: the baseline of benchmarks (see [`crate::plain`]).
    Plain {
        /// Time a discard of the region after the guest exits.
        discard_at_exit: bool,
        /// From the guest's first checkpoint on, a helper thread populates the first
        /// `quota_bytes` of the region ahead of the guest (`MADV_POPULATE_WRITE`).
        populate_ahead: bool,
    },
}

/// The region's owner for one run.
enum Backend {
    Memout(GuestHandle),
    Plain(PlainRegion),
}

impl Backend {
    fn host_addr(&self) -> usize {
        match self {
            Self::Memout(h) => h.region_host_addr(),
            Self::Plain(r) => r.addr(),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Self::Memout(h) => h.region_size(),
            Self::Plain(r) => r.size() as u64,
        }
    }

    fn stats(&self) -> GuestStatsSnapshot {
        match self {
            Self::Memout(h) => h.stats(),
            Self::Plain(_) => GuestStatsSnapshot::default(),
        }
    }

    fn fatal_error(&self) -> Option<GuestFault> {
        match self {
            Self::Memout(h) => h.fatal_error(),
            Self::Plain(_) => None,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "guest".into(),
            region_size: 4 << 30,
            quota_bytes: 1 << 30,
            policy: PopulatePolicy::default(),
            arg: 0,
            timeout: Duration::from_secs(120),
            echo: false,
            backing: Backing::Memout,
            setup: None,
            eviction: memout_server::Eviction::None,
            budget_bytes: None,
            min_bytes: 0,
            finish: Arc::default(),
            flags: Arc::default(),
            control: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited through the exit port with this code.
    Exited(i32),
    /// The server stopped the guest.
    Stopped(GuestFault),
    /// The guest took an exception (no IDT: a shutdown exit) or halted.
    Crashed(String),
    /// The run exceeded its time limit.
    TimedOut(Duration),
    /// The guest did something the VMM does not support (unknown port, unmapped address).
    Refused(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "guest exited with code {c}"),
            Self::Stopped(fault) => write!(f, "guest stopped by the server: {fault}"),
            Self::Crashed(m) => write!(f, "guest crashed: {m}"),
            Self::TimedOut(t) => write!(f, "guest timed out after {t:?}"),
            Self::Refused(m) => write!(f, "guest refused: {m}"),
        }
    }
}

/// A point the guest marked with [`PORT_CHECKPOINT`].
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The value the guest wrote.
    pub id: u32,
    /// Host time since the vCPU first ran, less the time the harness spent on checkpoints.
    pub at: Duration,
    /// Host RSS of the outsourced region.
    pub region_rss: u64,
    /// Server statistics at that moment.
    pub stats: GuestStatsSnapshot,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Lines the guest printed.
    pub output: Vec<String>,
    /// Checkpoints in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Server statistics at the end.
    pub stats: GuestStatsSnapshot,
    /// Host RSS of the outsourced region at the end.
    pub region_rss: u64,
    /// Wall time of the vCPU loop.
    pub elapsed: Duration,
    /// The timed discard, for [`Backing::Plain`] with `discard_at_exit`.
    pub discard: Option<Discard>,
    /// Evictions the guest asked for through [`PORT_EVICT_ALL`].
    pub evictions: Vec<EvictRecord>,
}

/// One eviction done for [`PORT_EVICT_ALL`].
#[derive(Debug, Clone)]
pub struct EvictRecord {
    /// How long the eviction took.
    pub took: Duration,
    /// Bytes evicted, or the error.
    pub result: std::result::Result<u64, memout_server::EvictError>,
}

impl RunReport {
    /// Host time between checkpoints `a` and `b`, if both were recorded.
    pub fn between(&self, a: u32, b: u32) -> Option<Duration> {
        let at = |id| self.checkpoints.iter().find(|c| c.id == id).map(|c| c.at);
        Some(at(b)?.saturating_sub(at(a)?))
    }
}

impl RunReport {
    /// True if the guest exited with code 0.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Exited(0)
    }
}

enum Watch {
    Kick,
    Done,
}

fn watchdog(rx: Receiver<Watch>, kick: Arc<Kick>, limit: Duration, timed_out: Arc<AtomicBool>) {
    let deadline = Instant::now() + limit;
    let mut kicking = false;
    loop {
        let wait = if kicking {
            Duration::from_millis(1)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(Watch::Done) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Watch::Kick) => kicking = true,
            Err(RecvTimeoutError::Timeout) if !kicking => {
                timed_out.store(true, SeqCst);
                kicking = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if kicking {
            kick.kick();
        }
    }
}

/// Runs `image` under `server` until it exits, is stopped, or times out.
pub fn run_guest(server: &Server, image: &GuestImage, cfg: &RunConfig) -> Result<RunReport> {
    let mut vm = GuestVm::new()?;
    vm.boot()
        .write_slice(&image.bytes, GuestAddress(image.load_addr))
        .map_err(Error::Load)?;
    let (tx, rx): (Sender<Watch>, Receiver<Watch>) = crossbeam_channel::unbounded();
    let fatal_tx = tx.clone();
    let mut backend = match cfg.backing {
        Backing::Memout => Backend::Memout(server.add_guest(GuestConfig {
            name: cfg.name.clone(),
            region_gpa: REGION_GPA,
            region_size: cfg.region_size,
            quota_bytes: cfg.quota_bytes,
            policy: cfg.policy,
            memory: memout_server::RegionMemory::allocate(),
            eviction: cfg.eviction.clone(),
            resident_budget_bytes: cfg.budget_bytes,
            min_bytes: cfg.min_bytes,
            channel: ChannelConfig {
                ring_gpa: RING,
                ring_slots: RING_SLOTS,
            },
            shared: vm.boot().clone(),
            on_fatal: Some(Box::new(move |_| {
                let _ = fatal_tx.send(Watch::Kick);
            })),
        })?),
        Backing::Plain { .. } => {
            Backend::Plain(PlainRegion::new(cfg.region_size as usize).map_err(Error::PlainRegion)?)
        }
    };
    if let (Backend::Memout(h), Some(setup)) = (&backend, &cfg.setup) {
        (setup.0)(h);
    }
    let _control = match &cfg.control {
        Some(path) => {
            let c = server.serve_control(path)?;
            if cfg.echo {
                println!("[{}] control socket {}", cfg.name, c.path().display());
            }
            Some(c)
        }
        None => None,
    };
    // SAFETY: the region belongs to `backend`, which is dropped after `vm` (below).
    unsafe { vm.map(REGION_GPA, backend.size(), backend.host_addr())? };
    vm.setup_cpl3(image.entry, &[(REGION_GPA, backend.size())])?;

    let kick = Arc::new(Kick::default());
    let _registered = kick.register_current_thread();
    let timed_out = Arc::new(AtomicBool::new(false));
    let dog = {
        let (kick, timed_out, limit) = (kick.clone(), timed_out.clone(), cfg.timeout);
        std::thread::Builder::new()
            .name(format!("memout-watchdog-{}", cfg.name))
            .spawn(move || watchdog(rx, kick, limit, timed_out))
            .map_err(Error::Watchdog)?
    };

    let mut output = Vec::new();
    let mut partial = String::new();
    let mut checkpoints = Vec::new();
    let mut evictions = Vec::new();
    let t0 = Instant::now();
    let mut harness = Duration::ZERO;
    let outcome = loop {
        if kick.requested() {
            break match backend.fatal_error() {
                Some(f) => Outcome::Stopped(f),
                None if timed_out.load(SeqCst) => Outcome::TimedOut(cfg.timeout),
                None => Outcome::Refused("stopped".into()),
            };
        }
        let exit = vm.vcpu().run();
        if let Some(f) = backend.fatal_error() {
            // The server stopped the guest while it ran: whatever the exit says (an emulated
            // access the server answered with a zero page completes first), the run is over.
            break Outcome::Stopped(f);
        }
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                let v = le_u32(data);
                match port {
                    PORT_DOORBELL => match &backend {
                        Backend::Memout(h) => {
                            h.on_doorbell();
                        }
                        Backend::Plain(_) => {
                            break Outcome::Refused(
                                "doorbell rung but this run has no memout server".into(),
                            );
                        }
                    },
                    PORT_DEBUG_STR => {
                        let s = read_cstr(vm.boot(), v as u64);
                        emit(&mut output, &mut partial, &s, cfg);
                    }
                    PORT_EXIT => break Outcome::Exited(v as i32),
                    PORT_CHECKPOINT => {
                        // The guest's timeline excludes the harness's own work (reading smaps
                        // can take milliseconds), so intervals between checkpoints measure
                        // only the guest and memout.
                        let at = t0.elapsed().saturating_sub(harness);
                        let t = Instant::now();
                        checkpoints.push(Checkpoint {
                            id: v,
                            at,
                            region_rss: mapping_rss(backend.host_addr()).unwrap_or(0),
                            stats: backend.stats(),
                        });
                        if let (
                            1,
                            Backend::Plain(p),
                            Backing::Plain {
                                populate_ahead: true,
                                ..
                            },
                        ) = (v, &mut backend, cfg.backing)
                        {
                            let ahead = cfg.quota_bytes as usize;
                            if let Err(e) = p.populate_ahead(ahead) {
                                break Outcome::Refused(format!("populate-ahead helper: {e}"));
                            }
                        }
                        harness += t.elapsed();
                    }
                    PORT_EVICT_ALL => {
                        let Backend::Memout(h) = &backend else {
                            break Outcome::Refused("eviction asked for without memout".into());
                        };
                        let t = Instant::now();
                        let result = h.evict(u64::MAX / 2);
                        let took = t.elapsed();
                        harness += took;
                        evictions.push(EvictRecord { took, result });
                    }
                    _ => break Outcome::Refused(format!("write to unknown I/O port {port:#x}")),
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let value = match port {
                    PORT_ARG => cfg.arg,
                    PORT_FINISH => cfg.finish.load(SeqCst) as u32,
                    PORT_FLAGS => cfg.flags.load(SeqCst),
                    _ => break Outcome::Refused(format!("read from unknown I/O port {port:#x}")),
                };
                let bytes = value.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                break Outcome::Refused(format!(
                    "access to unmapped guest-physical address {addr:#x}"
                ));
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = vm.vcpu().get_regs().map(|r| r.rip).unwrap_or(0);
                break Outcome::Crashed(format!("exception at rip {rip:#x} (shutdown exit)"));
            }
            Ok(VcpuExit::Hlt) => break Outcome::Crashed("hlt".into()),
            Ok(other) => break Outcome::Refused(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => break Outcome::Refused(format!("KVM_RUN failed: {e}")),
        }
    };
    let elapsed = t0.elapsed();
    if let Backend::Plain(p) = &mut backend {
        p.stop_ahead();
    }
    let _ = tx.send(Watch::Done);
    let _ = dog.join();
    if !partial.is_empty() {
        emit(&mut output, &mut partial, "\n", cfg);
    }
    let stats = backend.stats();
    let region_rss = mapping_rss(backend.host_addr()).unwrap_or(0);
    let discard = match (&mut backend, cfg.backing) {
        (
            Backend::Plain(r),
            Backing::Plain {
                discard_at_exit: true,
                ..
            },
        ) => {
            r.stop_ahead();
            Some(r.timed_discard().map_err(Error::PlainRegion)?)
        }
        _ => None,
    };
    // The VM (and its memslot over the region) goes before the region itself.
    drop(vm);
    drop(backend);
    Ok(RunReport {
        outcome,
        output,
        checkpoints,
        stats,
        region_rss,
        elapsed,
        discard,
        evictions,
    })
}

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

fn read_cstr(mem: &vm_memory::GuestMemoryMmap, gpa: u64) -> String {
    if gpa >= BOOT_SIZE {
        return format!("<debug string at {gpa:#x} outside boot memory>\n");
    }
    let mut buf = vec![0u8; (BOOT_SIZE - gpa).min(1024) as usize];
    if mem.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
        return format!("<unreadable debug string at {gpa:#x}>\n");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn emit(output: &mut Vec<String>, partial: &mut String, s: &str, cfg: &RunConfig) {
    partial.push_str(s);
    while let Some(i) = partial.find('\n') {
        let line: String = partial.drain(..=i).collect();
        let line = line.trim_end().to_string();
        if cfg.echo {
            println!("[{}] {line}", cfg.name);
        }
        if output.len() < MAX_OUTPUT_LINES {
            output.push(line);
        }
    }
    if partial.len() > 4096 {
        let line = std::mem::take(partial);
        if output.len() < MAX_OUTPUT_LINES {
            output.push(line);
        }
    }
}
