//! How much to swap in on a fault on evicted memory. A fault that follows the previous
//! swap-in through memory doubles the window (up to a 2 MiB chunk, when the next chunk is
//! also read ahead); a fault elsewhere falls back to a small window. Sequential scans get
//! large reads; random access does not pay 2 MiB of reading and copying for one page, nor
//! push 2 MiB of other memory out of the budget for it. Linux's swap read-ahead adapts its
//! window to hits in the same spirit.
//!
//! Random access concentrated on a few chunks (the hot part of a hot-cold mix) gets a window
//! per chunk: a fault within [`BURST_FAULTS`] swap-in faults of the same chunk's previous one
//! doubles that chunk's window, so a hot chunk comes back in a few large reads instead of one
//! fault per page.

use crate::extents::Run;
use std::collections::HashMap;

// A fault at most BURST_FAULTS swap-in faults after the previous one in the same chunk grows
// that chunk's window: the same burst that heats a chunk in `cold`. With uniform random
// access over `n` chunks that happens with probability about 16/n.
use crate::cold::BURST_FAULTS;
/// Per-chunk windows kept (older ones are forgotten all at once; they only cost a small
/// window on the next fault).
const MAX_CHUNK_WINDOWS: usize = 4096;

/// The window after a fault that does not follow the previous swap-in: one page. Measured
/// with uniform random access to 64 MiB under a 16 MiB budget, 1 page gave 3061 accesses/s
/// against 2524 for 8 pages (the kernel's default swap cluster), with a fifth of the
/// evictions; sequential and hot-cold access did not change.
pub const MIN_PAGES: u64 = 1;

/// The adaptive swap-in window of one guest.
#[derive(Debug, Clone)]
pub struct SwapInWindow {
    max: u64,
    pages: u64,
    /// The previous window's start, and where it (with its read-ahead) ends.
    last: Option<(u64, u64)>,
    /// Swap-in faults so far.
    clock: u64,
    /// Per chunk (of `max` pages): its window and the clock at its last fault.
    chunks: HashMap<u64, (u64, u64)>,
}

/// What one swap-in fault brings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapIn {
    /// The frames to swap in now (they contain the faulting frame).
    pub window: Run,
    /// Whether the run after it should be read ahead too (the window is at its largest).
    pub read_ahead: bool,
}

impl SwapInWindow {
    /// A window that grows up to `max` pages (a power of two, at least [`MIN_PAGES`]).
    pub fn new(max: u64) -> Self {
        debug_assert!(max.is_power_of_two() && max >= MIN_PAGES);
        Self {
            max,
            pages: MIN_PAGES,
            last: None,
            clock: 0,
            chunks: HashMap::new(),
        }
    }

    /// The window for a fault on evicted `frame` within the guest's `granted` run (which
    /// contains it); `read_ahead_pages` is how far read-ahead reaches past a full window.
    pub fn on_fault(&mut self, frame: u64, granted: Run, read_ahead_pages: u64) -> SwapIn {
        debug_assert!(granted.start <= frame && frame < granted.end());
        let follows = self
            .last
            .is_some_and(|(start, reach)| frame >= start && frame < reach + self.pages);
        self.pages = if follows {
            (self.pages * 2).min(self.max)
        } else {
            MIN_PAGES
        };
        self.clock += 1;
        if self.chunks.len() >= MAX_CHUNK_WINDOWS {
            self.chunks.clear();
        }
        let now = self.clock;
        let chunk = self.chunks.entry(frame / self.max).or_insert((0, 0));
        chunk.0 = if chunk.0 > 0 && now - chunk.1 <= BURST_FAULTS {
            (chunk.0 * 2).min(self.max)
        } else {
            MIN_PAGES
        };
        chunk.1 = now;
        let c = self.pages.max(chunk.0);
        // Read-ahead of the next chunk is for scans only.
        let read_ahead = follows && self.pages == self.max;
        let lo = (frame / c * c).max(granted.start);
        let hi = (frame / c * c + c).min(granted.end());
        let reach = if read_ahead {
            hi + read_ahead_pages
        } else {
            hi
        };
        self.last = Some((lo, reach));
        SwapIn {
            window: Run {
                start: lo,
                len: hi - lo,
            },
            read_ahead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: Run = Run {
        start: 0,
        len: 1 << 20,
    };

    #[test]
    fn a_scan_grows_to_full_chunks_with_read_ahead() {
        let mut w = SwapInWindow::new(512);
        let mut frame = 0;
        let mut sizes = Vec::new();
        while frame < 4096 {
            let s = w.on_fault(frame, G, 512);
            assert!(s.window.start <= frame && frame < s.window.end());
            sizes.push(s.window.len);
            // The guest touches everything swapped in (and read ahead), then faults past it.
            frame = s.window.end() + if s.read_ahead { 512 } else { 0 };
        }
        assert_eq!(&sizes[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert!(sizes[10..].iter().all(|&s| s == 512), "{sizes:?}");
    }

    #[test]
    fn a_jump_falls_back_to_the_small_window() {
        let mut w = SwapInWindow::new(512);
        for f in [0, 1, 3, 7, 15] {
            w.on_fault(f, G, 512);
        }
        let s = w.on_fault(100_000, G, 512);
        assert_eq!(s.window.len, MIN_PAGES);
        assert!(!s.read_ahead);
    }

    #[test]
    fn a_burst_in_one_chunk_grows_its_window_without_read_ahead() {
        let mut w = SwapInWindow::new(512);
        let mut sizes = Vec::new();
        for i in 0..12u64 {
            // Scattered within chunk 3, with a fault elsewhere in between.
            let s = w.on_fault(3 * 512 + (i * 97) % 512, G, 512);
            assert!(!s.read_ahead);
            sizes.push(s.window.len);
            w.on_fault(100 * 512 + i * 1000, G, 512);
        }
        assert_eq!(&sizes[..10], &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn faults_spread_over_many_chunks_keep_small_windows() {
        let mut w = SwapInWindow::new(512);
        // Round-robin over 64 chunks: each chunk's faults are 64 apart.
        for i in 0..10_000u64 {
            let s = w.on_fault((i % 64) * 512 + (i * 7) % 512, G, 512);
            assert_eq!(s.window.len, MIN_PAGES);
        }
    }

    #[test]
    fn the_window_stays_inside_the_grant() {
        let mut w = SwapInWindow::new(512);
        let g = Run { start: 5, len: 10 };
        for f in [5, 6, 8, 12] {
            w.on_fault(f, g, 512);
        }
        // The window has grown to 16: aligned, it would start at 0 and end at 16.
        let s = w.on_fault(14, g, 512);
        assert_eq!(s.window, Run { start: 5, len: 10 });
    }

    proptest! {
        #[test]
        fn every_window_holds_its_fault_within_the_grant(
            faults in proptest::collection::vec((0u64..10_000, 1u64..3000), 1..200)
        ) {
            let mut w = SwapInWindow::new(512);
            for (f, len) in faults {
                let g = Run { start: f.saturating_sub(len / 2), len };
                let s = w.on_fault(f, g, 512);
                prop_assert!(s.window.start <= f && f < s.window.end());
                prop_assert!(s.window.start >= g.start && s.window.end() <= g.end());
                prop_assert!(s.window.len <= 512 && s.window.len >= 1);
            }
        }
    }
}
