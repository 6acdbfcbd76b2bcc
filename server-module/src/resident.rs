//! Which frames are backed by host memory right now: a bitmap with an exact count. Pure logic.

use crate::extents::Run;

/// One bit per frame; set = resident (populated, not dropped).
#[derive(Debug, Clone)]
pub struct ResidentMap {
    words: Vec<u64>,
    frames: u64,
    count: u64,
}

impl ResidentMap {
    /// All `frames` non-resident. Costs `frames / 8` bytes (128 KiB per 4 GiB).
    pub fn new(frames: u64) -> Self {
        Self {
            words: vec![0; frames.div_ceil(64) as usize],
            frames,
            count: 0,
        }
    }

    /// Resident frames.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True if `frame` is resident.
    pub fn get(&self, frame: u64) -> bool {
        frame < self.frames && self.words[(frame / 64) as usize] & (1 << (frame % 64)) != 0
    }

    /// Marks `r` resident; returns how many frames changed.
    pub fn set(&mut self, r: Run) -> u64 {
        self.update(r, true)
    }

    /// Marks `r` non-resident; returns how many frames changed.
    pub fn clear(&mut self, r: Run) -> u64 {
        self.update(r, false)
    }

    fn update(&mut self, r: Run, on: bool) -> u64 {
        let end = r.end().min(self.frames);
        let mut changed = 0;
        let mut f = r.start;
        while f < end {
            let w = (f / 64) as usize;
            let lo = f % 64;
            let hi = (end - (f - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let before = self.words[w];
            self.words[w] = if on { before | mask } else { before & !mask };
            changed += (before ^ self.words[w]).count_ones() as u64;
            f = f - lo + hi;
        }
        if on {
            self.count += changed
        } else {
            self.count -= changed
        }
        changed
    }

    /// Maximal runs of resident frames inside `window`, in address order.
    pub fn present(&self, window: Run) -> Vec<Run> {
        let mut out = Vec::new();
        let mut f = window.start;
        for h in self.holes(window) {
            if h.start > f {
                out.push(Run {
                    start: f,
                    len: h.start - f,
                });
            }
            f = h.end();
        }
        let end = window.end().min(self.frames);
        if end > f {
            out.push(Run {
                start: f,
                len: end - f,
            });
        }
        out
    }

    /// Maximal runs of non-resident frames inside `window`, in address order.
    pub fn holes(&self, window: Run) -> Vec<Run> {
        let end = window.end().min(self.frames);
        let mut out = Vec::new();
        let mut f = window.start;
        while let Some(s) = self.next_with(f, end, false) {
            let e = self.next_with(s, end, true).unwrap_or(end);
            out.push(Run {
                start: s,
                len: e - s,
            });
            f = e;
        }
        out
    }

    /// The first frame in `[from, end)` whose bit equals `bit`, scanning a word at a time.
    fn next_with(&self, from: u64, end: u64, bit: bool) -> Option<u64> {
        let mut f = from;
        while f < end {
            let w = (f / 64) as usize;
            let word = if bit { self.words[w] } else { !self.words[w] };
            let masked = word & (u64::MAX << (f % 64));
            if masked != 0 {
                let pos = w as u64 * 64 + masked.trailing_zeros() as u64;
                return (pos < end).then_some(pos);
            }
            f = (w as u64 + 1) * 64;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_bool_model(ops in proptest::collection::vec((any::<bool>(), 0u64..300, 0u64..150), 1..60)) {
            let mut m = ResidentMap::new(300);
            let mut model = [false; 300];
            for (on, s, l) in ops {
                let r = Run { start: s, len: l };
                let end = (s + l).min(300);
                let expect = (s..end).filter(|&f| model[f as usize] != on).count() as u64;
                let changed = if on { m.set(r) } else { m.clear(r) };
                prop_assert_eq!(changed, expect);
                for f in s..end { model[f as usize] = on; }
                prop_assert_eq!(m.count(), model.iter().filter(|b| **b).count() as u64);
                let holes = m.holes(Run { start: 0, len: 300 });
                let hole_frames: u64 = holes.iter().map(|h| h.len).sum();
                prop_assert_eq!(hole_frames, 300 - m.count());
                for h in holes { for f in h.start..h.end() { prop_assert!(!model[f as usize]); } }
                let present = m.present(Run { start: 0, len: 300 });
                prop_assert_eq!(present.iter().map(|r| r.len).sum::<u64>(), m.count());
                for r in present { for f in r.start..r.end() { prop_assert!(model[f as usize]); } }
            }
        }
    }
}
