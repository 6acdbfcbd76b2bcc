//! A model of the fast-path protocol, checked with proptest: an honest or scribbling guest and
//! the host take steps in any interleaving (every guest pop or push and every host push is
//! two steps, a read or write and then a compare-and-swap, as on real hardware), and after
//! every step the host's accounting holds. For an honest guest, no frame is ever both the
//! guest's and free in the host's view, nor handed out twice.

use super::shadow::{FreeStackShadow, MagazineShadow};
use memout_protocol::fastpath::{
    STACK_BUSY, STACK_INDEX_MASK, mag_head, mag_state, mag_tail, stack_state, stack_taken,
    stack_top,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

const SLOTS: u32 = 8;
const FRAMES: u64 = 48;

#[derive(Debug, Clone)]
enum Step {
    /// Guest: read the head entry (first half of a pop).
    PopRead,
    /// Guest: swap in head + 1 if the word is still what it read (second half).
    PopCas,
    /// Guest: write its `n`th held frame at the free stack's top (first half of a free).
    FreeWrite(usize),
    /// Guest: swap in top + 1 (second half).
    FreeCas,
    /// Guest: read the free stack's top entry (first half of an alloc from it).
    StackPopRead,
    /// Guest: swap in top - 1 (second half).
    StackPopCas,
    /// Host: take `n` frames from its pool and write them at the tail (first half of a push).
    PushWrite(u8),
    /// Host: swap in the new tail (second half; on failure it re-reads and retries later).
    PushCas,
    /// Host: take every cached frame back.
    Reclaim,
    /// Host: mark the free stack busy (first swap of a take).
    DrainClaim,
    /// Host: read the entries, swap in (top, top), give the frames back to its pool.
    DrainRelease,
    /// Hostile guest: write anything to a state word or an entry.
    ScribbleState(u64),
    ScribbleEntry(u8, u64),
    ScribbleStack(u64),
    ScribbleFree(u8, u64),
}

fn honest() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::PopRead),
        3 => Just(Step::PopCas),
        2 => (0usize..8).prop_map(Step::FreeWrite),
        2 => Just(Step::FreeCas),
        2 => Just(Step::StackPopRead),
        2 => Just(Step::StackPopCas),
        2 => (1u8..6).prop_map(Step::PushWrite),
        2 => Just(Step::PushCas),
        1 => Just(Step::Reclaim),
        2 => Just(Step::DrainClaim),
        2 => Just(Step::DrainRelease),
    ]
}

fn hostile() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => honest(),
        1 => any::<u64>().prop_map(Step::ScribbleState),
        1 => (0u8..8, 0..FRAMES + 4).prop_map(|(i, f)| Step::ScribbleEntry(i, f)),
        1 => any::<u64>().prop_map(Step::ScribbleStack),
        1 => (0u8..8, 0..FRAMES + 4).prop_map(|(i, f)| Step::ScribbleFree(i, f)),
    ]
}

#[derive(Default)]
struct Shared {
    state: u64,
    entries: [u64; SLOTS as usize],
    stack: u64,
    freed: [u64; SLOTS as usize],
}

struct World {
    mem: Shared,
    // Host.
    shadow: MagazineShadow,
    freed: FreeStackShadow,
    pool: BTreeSet<u64>,
    granted: BTreeSet<u64>,
    push: Option<(Vec<u64>, u64)>,
    claim: Option<(u64, u32)>,
    disabled: bool,
    // Guest.
    held: Vec<u64>,
    pop: Option<(u64, u64)>,
    free: Option<(u64, u64)>,
    stack_pop: Option<(u64, u64)>,
}

impl World {
    fn new() -> Self {
        Self {
            mem: Shared::default(),
            shadow: MagazineShadow::new(SLOTS),
            freed: FreeStackShadow::new(SLOTS),
            pool: (0..FRAMES).collect(),
            granted: BTreeSet::new(),
            push: None,
            claim: None,
            disabled: false,
            held: Vec::new(),
            pop: None,
            free: None,
            stack_pop: None,
        }
    }

    /// The host reads the word; an impossible one stops its use of the fast path.
    fn observe(&mut self) -> bool {
        if self.disabled || self.shadow.observe(self.mem.state).is_err() {
            self.disabled = true;
            return false;
        }
        true
    }

    fn step(&mut self, s: &Step) {
        match *s {
            Step::PopRead => {
                let st = self.mem.state;
                if mag_head(st) != mag_tail(st) {
                    let e = self.mem.entries[(mag_head(st) % SLOTS) as usize];
                    self.pop = Some((st, e));
                }
            }
            Step::PopCas => {
                if let Some((st, e)) = self.pop.take()
                    && self.mem.state == st
                {
                    self.mem.state = mag_state(mag_head(st).wrapping_add(1), mag_tail(st));
                    self.held.push(e);
                }
            }
            Step::FreeWrite(i) => {
                let st = self.mem.stack;
                let (top, taken) = (stack_top(st), stack_taken(st));
                let room =
                    taken & STACK_BUSY == 0 && (top.wrapping_sub(taken) & STACK_INDEX_MASK) < SLOTS;
                if self.free.is_none() && !self.held.is_empty() && room {
                    let f = self.held.remove(i % self.held.len());
                    self.mem.freed[(top % SLOTS) as usize] = f;
                    self.free = Some((st, f));
                }
            }
            Step::FreeCas => {
                if let Some((st, f)) = self.free.take() {
                    if self.mem.stack == st {
                        let top = stack_top(st).wrapping_add(1) & STACK_INDEX_MASK;
                        self.mem.stack = stack_state(top, stack_taken(st));
                    } else {
                        self.held.push(f); // lost the race: keep it, free it again later
                    }
                }
            }
            Step::StackPopRead => {
                let st = self.mem.stack;
                if stack_taken(st) & STACK_BUSY == 0 && stack_top(st) != stack_taken(st) {
                    let top = stack_top(st).wrapping_sub(1) & STACK_INDEX_MASK;
                    self.stack_pop = Some((st, self.mem.freed[(top % SLOTS) as usize]));
                }
            }
            Step::StackPopCas => {
                if let Some((st, f)) = self.stack_pop.take()
                    && self.mem.stack == st
                {
                    let top = stack_top(st).wrapping_sub(1) & STACK_INDEX_MASK;
                    self.mem.stack = stack_state(top, stack_taken(st));
                    self.held.push(f);
                }
            }
            Step::PushWrite(n) => {
                if self.push.is_some() || !self.observe() {
                    return;
                }
                let frames: Vec<u64> = self
                    .pool
                    .iter()
                    .take((n as u32).min(self.shadow.room()) as usize)
                    .copied()
                    .collect();
                for f in &frames {
                    self.pool.remove(f);
                    self.granted.insert(*f);
                }
                let (entries, _) = self.shadow.plan_push(&frames);
                for (i, f) in entries {
                    self.mem.entries[i] = f;
                }
                self.push = Some((frames, self.shadow.state()));
            }
            Step::PushCas => {
                let Some((frames, expected)) = self.push.take() else {
                    return;
                };
                let (_, next) = self.shadow.plan_push(&frames);
                if self.mem.state == expected {
                    self.mem.state = next;
                    self.shadow.pushed(&frames);
                } else if self.observe() {
                    let (entries, _) = self.shadow.plan_push(&frames);
                    for (i, f) in entries {
                        self.mem.entries[i] = f; // the same slots: pops stop at the tail
                    }
                    self.push = Some((frames, self.shadow.state()));
                } else {
                    // Disabled: the frames stay granted to the guest (its quota pays).
                }
            }
            Step::Reclaim => {
                if self.push.is_none() && self.observe() {
                    let expected = self.shadow.state();
                    if self.mem.state == expected {
                        self.mem.state = self.shadow.plan_reclaim();
                        for f in self.shadow.reclaimed() {
                            assert!(self.granted.remove(&f), "reclaimed {f}, not granted");
                            self.pool.insert(f);
                        }
                    }
                }
            }
            Step::DrainClaim => {
                if self.disabled || self.claim.is_some() {
                    return;
                }
                let Ok(top) = self.freed.observe(self.mem.stack) else {
                    self.disabled = true;
                    return;
                };
                if self.freed.pending(top) > 0 {
                    let busy = self.freed.plan_claim(top);
                    self.mem.stack = busy; // the swap from the word just read
                    self.claim = Some((busy, top));
                }
            }
            Step::DrainRelease => {
                let Some((busy, top)) = self.claim.take() else {
                    return;
                };
                let entries: Vec<u64> = self
                    .freed
                    .claimed(top)
                    .into_iter()
                    .map(|i| self.mem.freed[i])
                    .collect();
                if self.mem.stack != busy {
                    self.disabled = true; // the guest broke the busy word
                    return;
                }
                self.mem.stack = self.freed.plan_release(top);
                self.freed.took(top);
                // Pops the host has not seen yet happened before these frees: look first.
                if !self.observe() {
                    return;
                }
                let cached: BTreeSet<u64> = self.shadow.cached_frames().collect();
                let mut seen = BTreeSet::new();
                for f in entries {
                    // Only frames granted, not cached and not repeated come back.
                    if self.granted.contains(&f) && !cached.contains(&f) && seen.insert(f) {
                        self.granted.remove(&f);
                        self.pool.insert(f);
                    }
                }
            }
            Step::ScribbleState(v) => self.mem.state = v,
            Step::ScribbleEntry(i, f) => self.mem.entries[i as usize] = f,
            Step::ScribbleStack(v) => self.mem.stack = v,
            Step::ScribbleFree(i, f) => self.mem.freed[i as usize] = f,
        }
    }

    /// Holds whatever the guest did: every frame is exactly once granted or free, and every
    /// cached frame is granted.
    fn check_host(&self) {
        assert!(self.pool.is_disjoint(&self.granted));
        assert_eq!(self.pool.len() + self.granted.len(), FRAMES as usize);
        for f in self.shadow.cached_frames() {
            assert!(self.granted.contains(&f), "cached {f} is not granted");
        }
    }

    /// Holds for an honest guest: what it holds is granted and its own, never free nor still
    /// in the magazine for another pop.
    fn check_honest(&self) {
        assert!(!self.disabled, "an honest guest never looks corrupt");
        let held: BTreeSet<u64> = self.held.iter().copied().collect();
        assert_eq!(held.len(), self.held.len(), "a frame popped twice");
        assert!(
            held.is_subset(&self.granted),
            "the guest holds a free frame"
        );
        let (h, t) = (mag_head(self.mem.state), mag_tail(self.mem.state));
        for p in h..t {
            let f = self.mem.entries[(p % SLOTS) as usize];
            assert!(!held.contains(&f), "{f} is held and still poppable");
        }
        let (top, taken) = (
            stack_top(self.mem.stack),
            stack_taken(self.mem.stack) & STACK_INDEX_MASK,
        );
        for p in taken..top {
            let f = self.mem.freed[(p % SLOTS) as usize];
            assert!(!held.contains(&f), "{f} is held and on the free stack");
            assert!(
                self.granted.contains(&f),
                "{f} is on the free stack and free"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_honest_guest_and_the_host_never_share_a_frame(steps in prop::collection::vec(honest(), 1..200)) {
        let mut w = World::new();
        for s in &steps {
            w.step(s);
            w.check_host();
            w.check_honest();
        }
    }

    #[test]
    fn a_scribbling_guest_cannot_break_the_hosts_accounting(steps in prop::collection::vec(hostile(), 1..200)) {
        let mut w = World::new();
        for s in &steps {
            w.step(s);
            w.check_host();
        }
    }
}
