//! Where an evicted frame's content lives: runs of frames mapped to runs of store slots (or to
//! nothing, for frames that were all zeroes and so were never written). Pure logic; one entry
//! per evicted run keeps the metadata small (a 2 MiB chunk evicted at once is one entry).

use crate::extents::Run;
use std::collections::BTreeMap;

/// A piece of an evicted run: frames `frames`, content in slots from `slot` (or zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The frames.
    pub frames: Run,
    /// First store slot, or `None` if the frames are all zeroes.
    pub slot: Option<u64>,
}

/// Evicted frames of one guest.
#[derive(Debug, Clone, Default)]
pub struct EvictedMap {
    runs: BTreeMap<u64, (u64, Option<u64>)>,
    total: u64,
}

impl EvictedMap {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Evicted frames.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Entries (metadata size is about 40 bytes each).
    pub fn entries(&self) -> usize {
        self.runs.len()
    }

    /// Records that `frames` are evicted to slots starting at `slot` (or are zero).
    ///
    /// # Panics
    /// If `frames` overlaps an evicted run (a memout bug).
    pub fn insert(&mut self, frames: Run, slot: Option<u64>) {
        if frames.len == 0 {
            return;
        }
        assert!(
            self.pieces(frames).is_empty(),
            "frames {frames:?} already evicted"
        );
        self.runs.insert(frames.start, (frames.len, slot));
        self.total += frames.len;
    }

    /// True if `frame` is evicted.
    pub fn contains(&self, frame: u64) -> bool {
        self.runs
            .range(..=frame)
            .next_back()
            .is_some_and(|(&s, &(l, _))| frame < s + l)
    }

    /// The evicted pieces inside `window`, clipped to it, in frame order.
    pub fn pieces(&self, window: Run) -> Vec<Piece> {
        let mut out = Vec::new();
        let first = self
            .runs
            .range(..=window.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(window.start);
        for (&s, &(l, slot)) in self.runs.range(first..window.end()) {
            let lo = s.max(window.start);
            let hi = (s + l).min(window.end());
            if lo < hi {
                out.push(Piece {
                    frames: Run {
                        start: lo,
                        len: hi - lo,
                    },
                    slot: slot.map(|x| x + (lo - s)),
                });
            }
        }
        out
    }

    /// Forgets the evicted frames inside `window` (swapped in or freed); returns the pieces
    /// removed so their slots can be freed.
    pub fn remove(&mut self, window: Run) -> Vec<Piece> {
        let removed = self.pieces(window);
        for p in &removed {
            let (&s, &(l, slot)) = self
                .runs
                .range(..=p.frames.start)
                .next_back()
                .expect("piece");
            self.runs.remove(&s);
            if s < p.frames.start {
                self.runs.insert(s, (p.frames.start - s, slot));
            }
            let end = s + l;
            if p.frames.end() < end {
                let off = p.frames.end() - s;
                self.runs.insert(
                    p.frames.end(),
                    (end - p.frames.end(), slot.map(|x| x + off)),
                );
            }
            self.total -= p.frames.len;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_and_offsets_slots() {
        let mut m = EvictedMap::new();
        m.insert(
            Run {
                start: 100,
                len: 10,
            },
            Some(50),
        );
        m.insert(Run { start: 200, len: 4 }, None);
        let p = m.pieces(Run {
            start: 105,
            len: 100,
        });
        assert_eq!(
            p,
            vec![
                Piece {
                    frames: Run { start: 105, len: 5 },
                    slot: Some(55)
                },
                Piece {
                    frames: Run { start: 200, len: 4 },
                    slot: None
                },
            ]
        );
        let r = m.remove(Run { start: 103, len: 2 });
        assert_eq!(
            r,
            vec![Piece {
                frames: Run { start: 103, len: 2 },
                slot: Some(53)
            }]
        );
        assert_eq!(m.total(), 12);
        assert!(m.contains(102) && !m.contains(103) && m.contains(105));
        assert_eq!(m.pieces(Run { start: 105, len: 1 })[0].slot, Some(55));
    }

    proptest! {
        #[test]
        fn agrees_with_a_per_frame_model(ops in proptest::collection::vec((any::<bool>(), 0u64..300, 1u64..40, any::<bool>()), 1..100)) {
            let mut m = EvictedMap::new();
            let mut model: Vec<Option<Option<u64>>> = vec![None; 400];
            let mut next_slot = 0u64;
            for (ins, start, len, zero) in ops {
                let r = Run { start, len };
                if ins {
                    if (start..start + len).all(|f| model[f as usize].is_none()) {
                        let slot = (!zero).then_some(next_slot);
                        m.insert(r, slot);
                        for (i, f) in (start..start + len).enumerate() {
                            model[f as usize] = Some(slot.map(|s| s + i as u64));
                        }
                        next_slot += len;
                    }
                } else {
                    let removed = m.remove(r);
                    let n: u64 = removed.iter().map(|p| p.frames.len).sum();
                    let expect = (start..start + len).filter(|&f| model[f as usize].is_some()).count() as u64;
                    prop_assert_eq!(n, expect);
                    for f in start..start + len { model[f as usize] = None; }
                }
                prop_assert_eq!(m.total(), model.iter().filter(|x| x.is_some()).count() as u64);
                for p in m.pieces(Run { start: 0, len: 400 }) {
                    for (i, f) in (p.frames.start..p.frames.end()).enumerate() {
                        prop_assert_eq!(model[f as usize], Some(p.slot.map(|s| s + i as u64)));
                    }
                }
            }
        }
    }
}
