//! The exit-free fast path, host side (protocol: `memout_protocol::fastpath`). A guest pops
//! granted frames from its magazine and pushes freed ones on its free stack without a VM
//! exit; the host, on the [`worker`] thread, refills magazines with frames it grants and
//! populates ahead, and takes free stacks back in batches (when half full, or when frames sat
//! there [`IDLE_TAKE`]). [`FastPath::reclaim`] takes every cached frame back at once (a
//! resize does this first).
//!
//! Invariants that make it safe against any guest (`docs/design.md`, "Fast path"):
//! - frames in a magazine are granted to the guest (they count against its quota) before they
//!   are pushed, so the guest can never hold more than its quota through the fast path;
//! - what the host frees comes from its own [`shadow`] of what it pushed, or from a free stack
//!   entry that names a frame the guest holds and that is not cached in a magazine; anything
//!   else is refused and counted;
//! - every step on shared state is one compare-and-swap with bounded retries: the host never
//!   waits for the guest;
//! - a state word no honest guest can produce stops the fast path for that guest; the frames
//!   it had cached stay the guest's.

mod area;
mod shadow;
pub(crate) mod worker;

#[cfg(test)]
mod model;

pub use shadow::Corruption;

use crate::config::FastPathConfig;
use crate::extents::Run;
use crate::log_limit::LogLimiter;
use memout_protocol::fastpath::{MAG_SLOTS, STACK_SLOTS};
use parking_lot::Mutex;
use shadow::{FreeStackShadow, MagazineShadow};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

pub(crate) use area::Error as AreaError;

/// A magazine is refilled (to full) when it holds fewer than this many frames.
pub const REFILL_BELOW: u32 = MAG_SLOTS / 2;
/// A free stack is taken when it holds this many frames.
pub const TAKE_AT: u32 = STACK_SLOTS / 2;
/// A free stack whose top has not moved for this long is taken, whatever it holds.
pub const IDLE_TAKE: Duration = Duration::from_millis(20);
/// Compare-and-swap attempts per step before the host tries again on a later pass.
const CAS_TRIES: usize = 64;

/// What the fast path needs from the guest it serves.
pub(crate) trait FrameSource {
    /// Grants up to `pages` frames (within the quota) and populates them; their runs.
    fn grant(&self, pages: u64) -> Vec<Run>;
    /// Takes back frames the guest gave up; returns pages taken (runs that are not the
    /// guest's are skipped).
    fn take_back(&self, runs: &[Run]) -> u64;
    /// Guest-physical address of a frame.
    fn gpa_of(&self, frame: u64) -> u64;
    /// The frame at a guest-physical address, if it is a page-aligned frame of the region.
    fn frame_of(&self, gpa: u64) -> Option<u64>;
}

/// Counters of one guest's fast path.
#[derive(Debug, Default)]
struct Counters {
    granted: AtomicU64,
    returned: AtomicU64,
    reclaimed: AtomicU64,
    refused: AtomicU64,
}

/// What a guest's fast path did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Frames granted into magazines.
    pub granted_pages: u64,
    /// Frames taken back from free stacks (freed by the guest).
    pub returned_pages: u64,
    /// Frames taken back by reclaims (cached, unused).
    pub reclaimed_pages: u64,
    /// Free stack entries refused (not a frame the guest held, cached, or repeated).
    pub refused_entries: u64,
    /// Why the host stopped using the fast path, if it did.
    pub stopped: Option<Corruption>,
}

/// Why a step stopped.
enum Stop {
    Corrupt(Corruption),
    Area(AreaError),
}

impl From<Corruption> for Stop {
    fn from(c: Corruption) -> Self {
        Self::Corrupt(c)
    }
}

impl From<AreaError> for Stop {
    fn from(e: AreaError) -> Self {
        Self::Area(e)
    }
}

struct StackWatch {
    shadow: FreeStackShadow,
    last_top: u32,
    since: Instant,
}

struct Host {
    mags: Vec<MagazineShadow>,
    stacks: Vec<StackWatch>,
    stopped: Option<Corruption>,
}

/// One guest's fast path.
pub(crate) struct FastPath {
    area: area::Area,
    /// Set once the guest asked for single pages through the doorbell (its magazine was
    /// empty): only then are magazines filled, so a guest that never uses the fast path has
    /// no frames granted ahead. A reclaim clears it.
    wanted: std::sync::atomic::AtomicBool,
    host: Mutex<Host>,
    counters: Counters,
    log: LogLimiter,
}

impl FastPath {
    /// Writes the area into guest memory.
    pub(crate) fn new(mem: GuestMemoryMmap, cfg: FastPathConfig) -> Result<Self, AreaError> {
        let area = area::Area::init(mem, cfg)?;
        let n = area.cpus();
        let now = Instant::now();
        Ok(Self {
            area,
            wanted: std::sync::atomic::AtomicBool::new(false),
            host: Mutex::new(Host {
                mags: (0..n).map(|_| MagazineShadow::new(MAG_SLOTS)).collect(),
                stacks: (0..n)
                    .map(|_| StackWatch {
                        shadow: FreeStackShadow::new(STACK_SLOTS),
                        last_top: 0,
                        since: now,
                    })
                    .collect(),
                stopped: None,
            }),
            counters: Counters::default(),
            log: LogLimiter::new(5, Duration::from_secs(10)),
        })
    }

    /// The guest asked for a few pages through the doorbell: fill its magazines from now on.
    pub(crate) fn want(&self) {
        self.wanted.store(true, Relaxed);
    }

    /// What it did so far.
    pub(crate) fn stats(&self) -> FastPathStats {
        let c = &self.counters;
        FastPathStats {
            granted_pages: c.granted.load(Relaxed),
            returned_pages: c.returned.load(Relaxed),
            reclaimed_pages: c.reclaimed.load(Relaxed),
            refused_entries: c.refused.load(Relaxed),
            stopped: self.host.lock().stopped,
        }
    }

    /// One pass of the worker: takes free stacks that are due, refills magazines that run
    /// low. True if it did anything.
    pub(crate) fn service(&self, src: &dyn FrameSource, span: &tracing::Span) -> bool {
        let mut h = self.host.lock();
        if h.stopped.is_some() {
            return false;
        }
        let r = self.service_locked(&mut h, src);
        self.settle(&mut h, r, span).unwrap_or(false)
    }

    /// Takes every cached frame back: all magazines, then all free stacks. Returns pages.
    pub(crate) fn reclaim(&self, src: &dyn FrameSource, span: &tracing::Span) -> u64 {
        let mut h = self.host.lock();
        if h.stopped.is_some() {
            return 0;
        }
        let r = self.reclaim_locked(&mut h, src);
        self.settle(&mut h, r, span).unwrap_or(0)
    }

    fn settle<T>(&self, h: &mut Host, r: Result<T, Stop>, span: &tracing::Span) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(stop) => {
                let why = match stop {
                    Stop::Corrupt(c) => c,
                    Stop::Area(e) => {
                        tracing::error!(parent: span, "fast path: {e}");
                        Corruption::Unreachable
                    }
                };
                h.stopped = Some(why);
                if let Some(suppressed) = self.log.allow() {
                    tracing::warn!(parent: span, suppressed, "fast path stopped for this guest: {why}");
                }
                None
            }
        }
    }

    fn service_locked(&self, h: &mut Host, src: &dyn FrameSource) -> Result<bool, Stop> {
        let mut busy = false;
        for cpu in 0..h.stacks.len() {
            let state = self.area.stack_state(cpu)?;
            let top = h.stacks[cpu].shadow.observe(state)?;
            let w = &mut h.stacks[cpu];
            if top != w.last_top {
                w.last_top = top;
                w.since = Instant::now();
            }
            let pending = w.shadow.pending(top);
            if pending >= TAKE_AT || (pending > 0 && w.since.elapsed() >= IDLE_TAKE) {
                busy |= self.take_stack(h, cpu, state, top, src)?.is_some();
            }
        }
        let wanted = self.wanted.load(Relaxed);
        for cpu in 0..h.mags.len() {
            let state = self.area.mag_state(cpu)?;
            h.mags[cpu].observe(state)?;
            let cached = h.mags[cpu].cached();
            if wanted && cached < REFILL_BELOW {
                busy |= self.refill(h, cpu, MAG_SLOTS - cached, src)? > 0;
            }
        }
        Ok(busy)
    }

    /// Takes free stack `cpu` (read as `state`, top `top`); returns pages given back, or
    /// `None` if the guest moved the stack meanwhile (the caller tries again later).
    fn take_stack(
        &self,
        h: &mut Host,
        cpu: usize,
        state: u64,
        top: u32,
        src: &dyn FrameSource,
    ) -> Result<Option<u64>, Stop> {
        let shadow = &h.stacks[cpu].shadow;
        let busy = shadow.plan_claim(top);
        if self.area.cas_stack(cpu, state, busy)?.is_err() {
            return Ok(None);
        }
        // The guest stays off the stack until the second swap, so these entries hold still.
        let gpas = shadow
            .claimed(top)
            .into_iter()
            .map(|slot| self.area.stack_entry(cpu, slot))
            .collect::<Result<Vec<u64>, _>>()?;
        if self
            .area
            .cas_stack(cpu, busy, shadow.plan_release(top))?
            .is_err()
        {
            return Err(Corruption::BusyBroken.into());
        }
        h.stacks[cpu].shadow.took(top);
        // A frame the guest popped from a magazine and then freed here must not look cached:
        // its pop came before its push, so a fresh look at the magazines sees it.
        for (cpu, m) in h.mags.iter_mut().enumerate() {
            m.observe(self.area.mag_state(cpu)?)?;
        }
        let cached: BTreeSet<u64> = h.mags.iter().flat_map(|m| m.cached_frames()).collect();
        let mut frames = BTreeSet::new();
        for gpa in gpas {
            match src.frame_of(gpa) {
                Some(f) if !cached.contains(&gpa) && frames.insert(f) => {}
                _ => {
                    self.counters.refused.fetch_add(1, Relaxed);
                }
            }
        }
        let runs = runs_of(frames);
        let freed = src.take_back(&runs);
        let listed: u64 = runs.iter().map(|r| r.len).sum();
        self.counters
            .refused
            .fetch_add(listed.saturating_sub(freed), Relaxed);
        self.counters.returned.fetch_add(freed, Relaxed);
        Ok(Some(freed))
    }

    /// Grants up to `want` frames into magazine `cpu`; returns how many were pushed. While
    /// it runs the magazine's `granting` says frames are coming (set before the grant takes
    /// quota, cleared after the push), so a guest refused at its quota meanwhile waits.
    fn refill(
        &self,
        h: &mut Host,
        cpu: usize,
        want: u32,
        src: &dyn FrameSource,
    ) -> Result<u64, Stop> {
        self.area.set_granting(cpu, want as u64)?;
        let r = self.grant_and_push(h, cpu, want, src);
        self.area.set_granting(cpu, 0)?;
        r
    }

    fn grant_and_push(
        &self,
        h: &mut Host,
        cpu: usize,
        want: u32,
        src: &dyn FrameSource,
    ) -> Result<u64, Stop> {
        let runs = src.grant(want as u64);
        let gpas: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.start..r.end())
            .map(|f| src.gpa_of(f))
            .collect();
        if gpas.is_empty() {
            return Ok(0);
        }
        let m = &mut h.mags[cpu];
        let (entries, _) = m.plan_push(&gpas);
        let pushing = entries.len();
        let r = (|| {
            for (slot, gpa) in &entries {
                self.area.set_mag_entry(cpu, *slot, *gpa)?;
            }
            for _ in 0..CAS_TRIES {
                let (_, next) = m.plan_push(&gpas);
                match self.area.cas_mag(cpu, m.state(), next)? {
                    Ok(()) => {
                        m.pushed(&gpas);
                        self.area.bump_refills(cpu)?;
                        return Ok(true);
                    }
                    // The guest popped meanwhile (its pops never reach the new entries).
                    Err(now) => {
                        m.observe(now)?;
                    }
                }
            }
            Ok::<bool, Stop>(false)
        })();
        let pushed = matches!(r, Ok(true));
        // Whatever was not pushed goes straight back.
        let back = if pushed { &gpas[pushing..] } else { &gpas[..] };
        let back: BTreeSet<u64> = back.iter().filter_map(|g| src.frame_of(*g)).collect();
        src.take_back(&runs_of(back));
        r?;
        let n = if pushed { pushing as u64 } else { 0 };
        self.counters.granted.fetch_add(n, Relaxed);
        Ok(n)
    }

    fn reclaim_locked(&self, h: &mut Host, src: &dyn FrameSource) -> Result<u64, Stop> {
        self.wanted.store(false, Relaxed);
        let mut total = 0;
        for cpu in 0..h.mags.len() {
            for _ in 0..CAS_TRIES {
                let state = self.area.mag_state(cpu)?;
                h.mags[cpu].observe(state)?;
                let next = h.mags[cpu].plan_reclaim();
                if self.area.cas_mag(cpu, state, next)?.is_ok() {
                    let frames: BTreeSet<u64> = h.mags[cpu]
                        .reclaimed()
                        .into_iter()
                        .filter_map(|g| src.frame_of(g))
                        .collect();
                    let n = src.take_back(&runs_of(frames));
                    self.counters.reclaimed.fetch_add(n, Relaxed);
                    total += n;
                    break;
                }
            }
        }
        for cpu in 0..h.stacks.len() {
            for _ in 0..CAS_TRIES {
                let state = self.area.stack_state(cpu)?;
                let top = h.stacks[cpu].shadow.observe(state)?;
                if h.stacks[cpu].shadow.pending(top) == 0 {
                    break;
                }
                if let Some(n) = self.take_stack(h, cpu, state, top, src)? {
                    total += n;
                    break;
                }
            }
        }
        Ok(total)
    }
}

/// Sorted, distinct frames as runs.
fn runs_of(frames: impl IntoIterator<Item = u64>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for f in frames {
        match out.last_mut() {
            Some(r) if r.end() == f => r.len += 1,
            _ => out.push(Run { start: f, len: 1 }),
        }
    }
    out
}
