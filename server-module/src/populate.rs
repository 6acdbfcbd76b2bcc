//! Population policy: which frames to fill when the guest faults on one. Pure logic.
//!
//! The host knows what the guest was granted, so it need not wait for one fault per page:
//! fault-around fills the whole aligned chunk around the fault, clipped to the granted run the
//! fault lies in (never beyond it, so no frame the guest does not hold is ever backed); eager
//! also queues every granted run to the eager workers at ALLOC time, so the second core fills
//! memory ahead of the guest.

use crate::extents::Run;

/// How the server backs granted frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopulatePolicy {
    /// One 4 KiB page per fault (the kernel's demand paging, done by memout).
    PerPage,
    /// On a fault, fill the aligned chunk of `chunk_pages` frames around it, clipped to the
    /// granted run.
    FaultAround {
        /// Chunk size in frames (a power of two; 512 = 2 MiB).
        chunk_pages: u64,
    },
    /// Fill granted runs on worker threads as soon as they are granted (in 2 MiB chunks);
    /// faults the workers have not reached yet are served with fault-around.
    Eager,
}

impl Default for PopulatePolicy {
    fn default() -> Self {
        Self::FaultAround { chunk_pages: 512 }
    }
}

impl PopulatePolicy {
    /// A stable name (`per-page`, `fault-around`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::PerPage => "per-page",
            Self::FaultAround { .. } => "fault-around",
            Self::Eager => "eager",
        }
    }

    /// Parses a policy name as printed by [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "per-page" => Some(Self::PerPage),
            "fault-around" => Some(Self::default()),
            "eager" => Some(Self::Eager),
            _ => None,
        }
    }

    /// All policies, for experiments that compare them.
    pub const ALL: [PopulatePolicy; 3] = [
        Self::PerPage,
        Self::FaultAround { chunk_pages: 512 },
        Self::Eager,
    ];

    /// The frames to consider populating for a fault on `frame`, which lies in the granted run
    /// `granted`.
    pub fn fault_window(&self, frame: u64, granted: Run) -> Run {
        debug_assert!(granted.start <= frame && frame < granted.end());
        match *self {
            Self::PerPage => Run {
                start: frame,
                len: 1,
            },
            Self::Eager => Self::default().fault_window(frame, granted),
            Self::FaultAround { chunk_pages } => {
                let c = chunk_pages.max(1);
                let lo = (frame / c * c).max(granted.start);
                let hi = (frame / c * c + c).min(granted.end());
                Run {
                    start: lo,
                    len: hi - lo,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn window_stays_inside_grant_and_covers_fault(start in 0u64..5000, len in 1u64..5000, off in 0u64..5000, c in 0u32..11) {
            let granted = Run { start, len };
            let frame = start + off % len;
            for p in [PopulatePolicy::PerPage, PopulatePolicy::Eager, PopulatePolicy::FaultAround { chunk_pages: 1 << c }] {
                let w = p.fault_window(frame, granted);
                prop_assert!(w.start >= granted.start && w.end() <= granted.end());
                prop_assert!(w.start <= frame && frame < w.end());
                prop_assert!(w.len <= (1 << c).max(512));
            }
        }
    }

    #[test]
    fn names_roundtrip() {
        for p in PopulatePolicy::ALL {
            assert_eq!(PopulatePolicy::parse(p.name()), Some(p));
        }
        assert_eq!(PopulatePolicy::parse("eager-ish"), None);
    }
}
