//! One guest's frame allocator over its outsourced region, with quota accounting. Pure logic.
//!
//! Frames are numbered from 0 at the region's base. Every frame is in exactly one state:
//! free, allocated (granted to the guest), or releasing (the guest freed it; the host is still
//! dropping its backing, so it can be neither touched by the guest nor granted again).

use crate::extents::{ExtentSet, Run};
use thiserror::Error;

/// Why an allocator request was refused. Nothing changed when one is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// The grant would take the guest above its quota.
    #[error("quota exceeded: {allocated} allocated + {wanted} wanted > quota {quota} pages")]
    Quota {
        /// Frames allocated now.
        allocated: u64,
        /// Frames asked for.
        wanted: u64,
        /// The quota.
        quota: u64,
    },
    /// No room in the region, or not within the number of runs the caller can take.
    #[error("no memory: {wanted} pages do not fit in {max_runs} runs")]
    NoMemory {
        /// Frames asked for.
        wanted: u64,
        /// Runs the caller can receive.
        max_runs: usize,
    },
    /// A run is empty, outside the region, or overlaps another run of the same request.
    #[error("invalid run {0:?}")]
    Invalid(Run),
    /// A run includes frames that are not allocated to the guest.
    #[error("run {0:?} is not (entirely) allocated to the guest")]
    NotOwned(Run),
    /// The quota is above the region size.
    #[error("quota {quota} pages above region of {frames} frames")]
    QuotaAboveRegion {
        /// Requested quota.
        quota: u64,
        /// Frames in the region.
        frames: u64,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Extent-based allocator for one region with a quota.
#[derive(Debug, Clone)]
pub struct FrameAllocator {
    frames: u64,
    quota: u64,
    free: ExtentSet,
    releasing: ExtentSet,
}

impl FrameAllocator {
    /// An allocator for `frames` frames, all free, with `quota` pages of quota.
    pub fn new(frames: u64, quota: u64) -> Result<Self> {
        if quota > frames {
            return Err(Error::QuotaAboveRegion { quota, frames });
        }
        let mut free = ExtentSet::new();
        free.insert(Run {
            start: 0,
            len: frames,
        });
        Ok(Self {
            frames,
            quota,
            free,
            releasing: ExtentSet::new(),
        })
    }

    /// Frames in the region.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The quota in pages.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Frames granted to the guest.
    pub fn allocated(&self) -> u64 {
        self.frames - self.free.total() - self.releasing.total()
    }

    /// Frames the guest gave back whose host pages are still being dropped.
    pub fn releasing(&self) -> u64 {
        self.releasing.total()
    }

    /// Sets the quota. It may go below `allocated()` (a shrink in progress): further grants are
    /// refused until the guest is back under it.
    pub fn set_quota(&mut self, quota: u64) -> Result<()> {
        if quota > self.frames {
            return Err(Error::QuotaAboveRegion {
                quota,
                frames: self.frames,
            });
        }
        self.quota = quota;
        Ok(())
    }

    /// True if `frame` is allocated to the guest.
    pub fn is_allocated(&self, frame: u64) -> bool {
        frame < self.frames
            && self.free.containing(frame).is_none()
            && self.releasing.containing(frame).is_none()
    }

    /// The largest run of allocated frames around `frame` (bounded by free or releasing
    /// frames and the region), or `None` if `frame` is not allocated.
    pub fn allocated_run(&self, frame: u64) -> Option<Run> {
        if !self.is_allocated(frame) {
            return None;
        }
        let before = |s: &ExtentSet| s.last_before(frame).map(|r| r.end()).unwrap_or(0);
        let after = |s: &ExtentSet| s.first_after(frame).map(|r| r.start).unwrap_or(self.frames);
        let start = before(&self.free).max(before(&self.releasing));
        let end = after(&self.free).min(after(&self.releasing));
        Some(Run {
            start,
            len: end - start,
        })
    }

    /// Grants `wanted` frames in at most `max_runs` runs. With `partial`, grants as much as fits
    /// (possibly nothing); otherwise all or nothing. Prefers one run (best fit), then the
    /// longest runs, so a guest gets few, large extents.
    pub fn allocate(&mut self, wanted: u64, max_runs: usize, partial: bool) -> Result<Vec<Run>> {
        let room = self.quota.saturating_sub(self.allocated());
        let target = if partial { wanted.min(room) } else { wanted };
        if target > room {
            return Err(Error::Quota {
                allocated: self.allocated(),
                wanted,
                quota: self.quota,
            });
        }
        if target == 0 || max_runs == 0 {
            return if partial || target == 0 {
                Ok(Vec::new())
            } else {
                Err(Error::NoMemory { wanted, max_runs })
            };
        }
        let picks: Vec<Run> = if let Some(fit) = self.free.best_fit(target) {
            vec![Run {
                start: fit.start,
                len: target,
            }]
        } else {
            let mut left = target;
            let mut v = Vec::new();
            for r in self.free.longest_k(max_runs) {
                let take = r.len.min(left);
                v.push(Run {
                    start: r.start,
                    len: take,
                });
                left -= take;
                if left == 0 {
                    break;
                }
            }
            if left > 0 && !partial {
                return Err(Error::NoMemory { wanted, max_runs });
            }
            v
        };
        for r in &picks {
            self.free.remove(*r);
        }
        Ok(picks)
    }

    /// Validates `runs` (all inside the region, allocated, disjoint) and moves them to
    /// releasing. Returns the number of frames. All or nothing.
    pub fn begin_release(&mut self, runs: &[Run]) -> Result<u64> {
        let mut seen = ExtentSet::new();
        for &r in runs {
            if r.len == 0 || r.start.checked_add(r.len).is_none_or(|e| e > self.frames) {
                return Err(Error::Invalid(r));
            }
            if seen.overlaps(r) {
                return Err(Error::Invalid(r));
            }
            if self.free.overlaps(r) || self.releasing.overlaps(r) {
                return Err(Error::NotOwned(r));
            }
            seen.insert(r);
        }
        for &r in runs {
            self.releasing.insert(r);
        }
        Ok(seen.total())
    }

    /// Ends the release of runs passed to [`begin_release`](Self::begin_release): they are free.
    pub fn finish_release(&mut self, runs: &[Run]) {
        for &r in runs {
            self.releasing.remove(r);
            self.free.insert(r);
        }
    }

    /// Undoes [`begin_release`](Self::begin_release): the runs are the guest's again (its FREE
    /// failed on the host side and never returns them to the free pool).
    pub fn abort_release(&mut self, runs: &[Run]) {
        for &r in runs {
            self.releasing.remove(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grants_one_run_when_it_fits_and_respects_quota() {
        let mut a = FrameAllocator::new(1024, 100).unwrap();
        let g = a.allocate(64, 4, false).unwrap();
        assert_eq!(g, vec![Run { start: 0, len: 64 }]);
        assert_eq!(a.allocated(), 64);
        assert!(matches!(a.allocate(37, 4, false), Err(Error::Quota { .. })));
        assert_eq!(
            a.allocate(37, 4, true)
                .unwrap()
                .iter()
                .map(|r| r.len)
                .sum::<u64>(),
            36
        );
        assert_eq!(a.allocated(), 100);
        assert_eq!(a.allocate(1, 1, true).unwrap(), vec![]);
    }

    #[test]
    fn release_is_all_or_nothing() {
        let mut a = FrameAllocator::new(64, 64).unwrap();
        a.allocate(16, 1, false).unwrap();
        let bad = [Run { start: 0, len: 8 }, Run { start: 12, len: 8 }];
        assert_eq!(a.begin_release(&bad), Err(Error::NotOwned(bad[1])));
        let dup = [Run { start: 0, len: 8 }, Run { start: 4, len: 2 }];
        assert_eq!(a.begin_release(&dup), Err(Error::Invalid(dup[1])));
        assert_eq!(
            a.begin_release(&[Run { start: 60, len: 8 }]),
            Err(Error::Invalid(Run { start: 60, len: 8 }))
        );
        assert_eq!(a.allocated(), 16);
        let ok = [Run { start: 0, len: 8 }];
        assert_eq!(a.begin_release(&ok), Ok(8));
        assert!(!a.is_allocated(3));
        assert_eq!(a.allocated_run(9), Some(Run { start: 8, len: 8 }));
        // Releasing frames cannot be granted again until the release ends.
        assert_eq!(
            a.allocate(48, 1, false).unwrap(),
            vec![Run { start: 16, len: 48 }]
        );
        assert!(matches!(
            a.allocate(8, 4, false),
            Err(Error::Quota { .. } | Error::NoMemory { .. })
        ));
        a.finish_release(&ok);
        assert_eq!(a.allocated(), 56);
        assert_eq!(
            a.allocate(8, 1, false).unwrap(),
            vec![Run { start: 0, len: 8 }]
        );
    }

    #[test]
    fn fragmented_region_needs_enough_runs() {
        let mut a = FrameAllocator::new(16, 16).unwrap();
        a.allocate(16, 1, false).unwrap();
        for s in [0, 4, 8, 12] {
            a.begin_release(&[Run { start: s, len: 2 }]).unwrap();
            a.finish_release(&[Run { start: s, len: 2 }]);
        }
        assert_eq!(
            a.allocate(8, 3, false),
            Err(Error::NoMemory {
                wanted: 8,
                max_runs: 3
            })
        );
        assert_eq!(a.allocate(8, 4, false).unwrap().len(), 4);
    }

    #[test]
    fn refuses_quota_above_region() {
        assert!(FrameAllocator::new(10, 11).is_err());
        let mut a = FrameAllocator::new(10, 5).unwrap();
        assert!(a.set_quota(11).is_err());
        assert_eq!(a.quota(), 5);
    }

    #[test]
    fn handles_64_gib_regions() {
        let frames = 64u64 << 18; // 64 GiB of 4 KiB frames
        let mut a = FrameAllocator::new(frames, frames).unwrap();
        let g = a.allocate(frames / 2, 1, false).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(a.allocated_run(frames / 4), Some(g[0]));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64, usize, bool),
        Free(usize, u64, u64),
        Quota(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..300, 1usize..6, any::<bool>()).prop_map(|(n, k, p)| Op::Alloc(n, k, p)),
            (any::<usize>(), 0u64..64, 1u64..64).prop_map(|(i, o, l)| Op::Free(i, o, l)),
            (0u64..1100).prop_map(Op::Quota),
        ]
    }

    proptest! {
        /// No frame granted twice; frees of unowned frames rejected; accounting exact.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..150)) {
            const N: u64 = 1024;
            let mut a = FrameAllocator::new(N, 512).unwrap();
            let mut owned = vec![false; N as usize];
            let mut grants: Vec<Run> = Vec::new();
            for o in ops {
                match o {
                    Op::Alloc(n, k, partial) => {
                        let before = a.allocated();
                        match a.allocate(n, k, partial) {
                            Ok(runs) => {
                                prop_assert!(runs.len() <= k);
                                let got: u64 = runs.iter().map(|r| r.len).sum();
                                if !partial { prop_assert_eq!(got, n); }
                                prop_assert!(got <= n);
                                for r in runs {
                                    for f in r.start..r.end() {
                                        prop_assert!(!owned[f as usize], "frame {} granted twice", f);
                                        owned[f as usize] = true;
                                    }
                                    grants.push(r);
                                }
                                prop_assert!(a.allocated() <= a.quota().max(before));
                            }
                            Err(_) => prop_assert_eq!(a.allocated(), before),
                        }
                    }
                    Op::Free(i, off, len) => {
                        let r = if grants.is_empty() || i % 4 == 0 {
                            Run { start: (i as u64) % N, len }
                        } else {
                            let g = grants[i % grants.len()];
                            Run { start: g.start + off % g.len, len: len.min(g.len - off % g.len) }
                        };
                        let all_owned = r.end() <= N && (r.start..r.end()).all(|f| owned[f as usize]);
                        let before = a.allocated();
                        match a.begin_release(&[r]) {
                            Ok(n) => {
                                prop_assert!(all_owned);
                                prop_assert_eq!(n, r.len);
                                if i % 5 == 1 {
                                    // A FREE that failed on the host: the guest keeps the run.
                                    a.abort_release(&[r]);
                                } else {
                                    a.finish_release(&[r]);
                                    for f in r.start..r.end() { owned[f as usize] = false; }
                                }
                            }
                            Err(_) => {
                                prop_assert!(!all_owned);
                                prop_assert_eq!(a.allocated(), before);
                            }
                        }
                    }
                    Op::Quota(q) => {
                        let res = a.set_quota(q);
                        prop_assert_eq!(res.is_ok(), q <= N);
                    }
                }
                let count = owned.iter().filter(|b| **b).count() as u64;
                prop_assert_eq!(a.allocated(), count);
                for f in (0..N).step_by(37) {
                    prop_assert_eq!(a.is_allocated(f), owned[f as usize]);
                }
            }
        }
    }
}
