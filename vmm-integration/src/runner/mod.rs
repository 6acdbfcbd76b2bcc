//! Runs one guest program to its end: a VM with the boot region, an outsourced region served
//! by a [`Server`], the vCPU loop dispatching exits, and a watchdog that stops the vCPU when
//! the server stops the guest or the run exceeds its time limit.

use crate::image::GuestImage;
use crate::layout::{
    BOOT_SIZE, FASTPATH, REGION_GPA, RING, RING_SLOTS, SEGMENT_GPA, SEGMENT_WINDOW,
};
use crate::plain::PlainRegion;
use crate::vcpu_kick::Kick;
use crate::vm::{self, GuestVm};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use kvm_ioctls::VcpuExit;
use memout_protocol::ring::{PORT_DEBUG_STR, PORT_DOORBELL, PORT_EXIT};
use memout_server::procfs::mapping_rss;
use memout_server::{
    ChannelConfig, FastPathConfig, GuestConfig, GuestFault, GuestHandle, GuestStatsSnapshot, Server,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

mod config;
mod report;

pub use config::{Backing, GuestSetup, RunConfig};
pub use report::{Checkpoint, EvictRecord, ExitCounts, Outcome, RunReport};

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
/// Harness port (not memout ABI): `out` selects a parameter by index, `in` returns it
/// ([`RunConfig::params`]; 0 past the end). Guests with more to configure than the run's
/// argument read their parameters here (the `memwork` guest: `memout_harness.h`).
pub const PORT_PARAM: u16 = 0x526;
/// Harness port (not memout ABI): `out` N makes the vCPU sleep N microseconds on the host
/// (at most one second), as a halted CPU would: guests at CPL3 cannot halt, and a dummy guest
/// with a duty cycle (the `cpuwork` guest) needs to idle without spinning.
pub const PORT_SLEEP: u16 = 0x527;
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
    /// The fault spin is above its limit.
    #[error(transparent)]
    Config(#[from] memout_server::ConfigError),
    /// The control socket could not be served.
    #[error("{0} (choose another path with --control, or --no-control)")]
    Control(#[from] memout_server::control::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

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
                fastpath: cfg.fastpath.then_some(FastPathConfig {
                    gpa: FASTPATH,
                    nr_cpus: 1,
                }),
            },
            shared: vm.boot().clone(),
            on_fatal: Some(Box::new(move |_| {
                let _ = fatal_tx.send(Watch::Kick);
            })),
            mergeable: cfg.mergeable,
            segments: cfg.segments.then(|| memout_server::segment::SegmentWindow {
                gpa: SEGMENT_GPA,
                size: SEGMENT_WINDOW,
                mapper: Arc::new(vm.segment_mapper()),
            }),
        })?),
        Backing::Plain { .. } => {
            Backend::Plain(PlainRegion::new(cfg.region_size as usize).map_err(Error::PlainRegion)?)
        }
    };
    if let Backend::Memout(h) = &backend {
        h.set_fault_spin(cfg.fault_spin)?;
        if let Some(setup) = &cfg.setup {
            (setup.0)(h);
        }
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
    let mut ranges = vec![(REGION_GPA, backend.size())];
    if cfg.segments && matches!(backend, Backend::Memout(_)) {
        ranges.push((SEGMENT_GPA, SEGMENT_WINDOW));
    }
    vm.setup_cpl3(image.entry, &ranges)?;

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
    let mut exits = ExitCounts::default();
    let mut param_index = 0usize;
    let outcome = loop {
        if kick.requested() {
            break match backend.fatal_error() {
                Some(f) => Outcome::Stopped(f),
                None if timed_out.load(SeqCst) => Outcome::TimedOut(cfg.timeout),
                None => Outcome::Refused("stopped".into()),
            };
        }
        let exit = vm.vcpu().run();
        exits.total += 1;
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
                            exits.doorbells += 1;
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
                    PORT_PARAM => param_index = v as usize,
                    PORT_SLEEP => {
                        std::thread::sleep(Duration::from_micros(u64::from(v).min(1_000_000)));
                    }
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
                            exits: ExitCounts {
                                total: exits.total - 1,
                                ..exits
                            },
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
                    PORT_PARAM => cfg.params.get(param_index).copied().unwrap_or(0),
                    PORT_FINISH => cfg.finish.load(SeqCst) as u32,
                    PORT_FLAGS => {
                        let v = cfg.flags.load(SeqCst);
                        cfg.flags_reads.fetch_add(1, SeqCst);
                        v
                    }
                    _ => break Outcome::Refused(format!("read from unknown I/O port {port:#x}")),
                };
                let bytes = value.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            // A write to a read-only shared segment: refused (the write does not happen),
            // reported, and the guest goes on.
            Ok(VcpuExit::MmioWrite(addr, _)) if matches!(&backend, Backend::Memout(h) if h.segment_write_refused(addr)) =>
                {}
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
        exits,
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
