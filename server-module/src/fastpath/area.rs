//! The fast-path area in guest memory, reached only through vm-memory: the header the host
//! writes once, the state words (atomic loads and compare-and-swap on guest memory) and the
//! entries. Everything read here is guest-written and is checked by the caller.

use crate::config::FastPathConfig;
use memout_protocol::fastpath::{
    FASTPATH_MAGIC, FASTPATH_VERSION, FastPathHeader, FreeStackHeader, MAG_GRANTING_OFFSET,
    MAG_REFILLS_OFFSET, MAG_SLOTS, MAG_STATE_OFFSET, MagazineHeader, STACK_SLOTS,
    STACK_STATE_OFFSET, fastpath_size, free_stack_size, magazine_size,
};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

/// The area could not be reached (it was checked to lie in shared memory, so this is a bug or
/// a VMM that changed its memory).
#[derive(Debug, Error)]
#[error("fast-path area at {gpa:#x}: {source}")]
pub struct Error {
    gpa: u64,
    #[source]
    source: vm_memory::GuestMemoryError,
}

/// `Result` with this module's [`struct@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One guest's fast-path area.
pub(crate) struct Area {
    mem: GuestMemoryMmap,
    mags: u64,
    stacks: u64,
    nr_cpus: u32,
}

impl Area {
    /// Writes the header and empty magazines and stacks.
    pub(crate) fn init(mem: GuestMemoryMmap, cfg: FastPathConfig) -> Result<Self> {
        let mags = cfg.gpa + FastPathHeader::SIZE as u64;
        let stacks = mags + cfg.nr_cpus as u64 * magazine_size();
        let header = FastPathHeader {
            magic: FASTPATH_MAGIC,
            version: FASTPATH_VERSION,
            nr_cpus: cfg.nr_cpus,
            mag_slots: MAG_SLOTS,
            stack_slots: STACK_SLOTS,
            mags_gpa: mags,
            stacks_gpa: stacks,
            ..Default::default()
        };
        let size = fastpath_size(cfg.nr_cpus) as usize;
        let err = |source| Error {
            gpa: cfg.gpa,
            source,
        };
        mem.write_slice(&vec![0u8; size], GuestAddress(cfg.gpa))
            .map_err(err)?;
        mem.write_slice(&header.to_bytes(), GuestAddress(cfg.gpa))
            .map_err(err)?;
        Ok(Self {
            mem,
            mags,
            stacks,
            nr_cpus: cfg.nr_cpus,
        })
    }

    /// Number of magazines (and of free stacks).
    pub(crate) fn cpus(&self) -> usize {
        self.nr_cpus as usize
    }

    fn mag(&self, cpu: usize) -> u64 {
        self.mags + cpu as u64 * magazine_size()
    }

    fn stack(&self, cpu: usize) -> u64 {
        self.stacks + cpu as u64 * free_stack_size()
    }

    /// Runs `f` on the atomic word at `gpa` (8-byte aligned, in the area).
    fn word<T>(&self, gpa: u64, f: impl FnOnce(&AtomicU64) -> T) -> Result<T> {
        let err = |source| Error { gpa, source };
        let slice = self.mem.get_slice(GuestAddress(gpa), 8).map_err(err)?;
        let word = slice
            .get_atomic_ref::<AtomicU64>(0)
            .map_err(|e| err(e.into()))?;
        Ok(f(word))
    }

    /// The magazine's state word (acquire: the guest's entries before it are visible).
    pub(crate) fn mag_state(&self, cpu: usize) -> Result<u64> {
        self.word(self.mag(cpu) + MAG_STATE_OFFSET as u64, |w| {
            w.load(Ordering::Acquire)
        })
    }

    /// Swaps the magazine's state word from `old` to `new`; `Err(current)` if it was not
    /// `old`.
    pub(crate) fn cas_mag(
        &self,
        cpu: usize,
        old: u64,
        new: u64,
    ) -> Result<std::result::Result<(), u64>> {
        self.word(self.mag(cpu) + MAG_STATE_OFFSET as u64, |w| {
            w.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())
        })
    }

    /// Writes magazine entry `slot`.
    pub(crate) fn set_mag_entry(&self, cpu: usize, slot: usize, gpa: u64) -> Result<()> {
        let at = self.mag(cpu) + MAG_HEADER + slot as u64 * 8;
        self.mem
            .write_obj(gpa, GuestAddress(at))
            .map_err(|source| Error { gpa: at, source })
    }

    /// Counts one more push in the magazine's `refills`.
    pub(crate) fn bump_refills(&self, cpu: usize) -> Result<()> {
        self.word(self.mag(cpu) + MAG_REFILLS_OFFSET as u64, |w| {
            w.fetch_add(1, Ordering::Release);
        })
    }

    /// Says how many frames are on their way into the magazine (0: none).
    pub(crate) fn set_granting(&self, cpu: usize, frames: u64) -> Result<()> {
        self.word(self.mag(cpu) + MAG_GRANTING_OFFSET as u64, |w| {
            w.store(frames, Ordering::Release);
        })
    }

    /// The free stack's state word.
    pub(crate) fn stack_state(&self, cpu: usize) -> Result<u64> {
        self.word(self.stack(cpu) + STACK_STATE_OFFSET as u64, |w| {
            w.load(Ordering::Acquire)
        })
    }

    /// Swaps the free stack's state word from `old` to `new`; `Err(current)` if it was not
    /// `old`.
    pub(crate) fn cas_stack(
        &self,
        cpu: usize,
        old: u64,
        new: u64,
    ) -> Result<std::result::Result<(), u64>> {
        self.word(self.stack(cpu) + STACK_STATE_OFFSET as u64, |w| {
            w.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())
        })
    }

    /// Reads free stack entry `slot` (guest-written: any value).
    pub(crate) fn stack_entry(&self, cpu: usize, slot: usize) -> Result<u64> {
        let at = self.stack(cpu) + STACK_HEADER + slot as u64 * 8;
        self.mem
            .read_obj(GuestAddress(at))
            .map_err(|source| Error { gpa: at, source })
    }
}

/// Bytes before a magazine's entries.
const MAG_HEADER: u64 = size_of::<MagazineHeader>() as u64;
/// Bytes before a free stack's entries.
const STACK_HEADER: u64 = size_of::<FreeStackHeader>() as u64;
