//! The host's own record of one magazine and one free stack: what it pushed and where, and
//! what it has taken. Every index the guest writes is checked against it, and every frame the
//! host frees or hands out comes from it, never from guest memory. Pure logic.

use memout_protocol::fastpath::{
    STACK_BUSY, STACK_INDEX_MASK, mag_head, mag_state, mag_tail, stack_state, stack_taken,
    stack_top,
};
use thiserror::Error;

/// Shared state that no well-behaved guest can produce. The host stops using the guest's fast
/// path; the frames it had cached stay the guest's (they count against its quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Corruption {
    /// A magazine's tail is not the one the host published.
    #[error("magazine tail is {seen}, the host published {ours}")]
    TailMoved {
        /// What the state word says.
        seen: u32,
        /// What the host published.
        ours: u32,
    },
    /// A magazine's head moved backwards, or past the tail.
    #[error("magazine head moved from {from} to {to} with the tail at {tail}")]
    HeadOutOfRange {
        /// The head the host saw last.
        from: u32,
        /// The head now.
        to: u32,
        /// The tail.
        tail: u32,
    },
    /// A free stack's `taken` is not the one the host published.
    #[error("free stack taken is {seen}, the host published {ours}")]
    TakenMoved {
        /// What the state word says.
        seen: u32,
        /// What the host published.
        ours: u32,
    },
    /// The guest changed a free stack's word while the host held it busy.
    #[error("the free stack changed while the host was taking it")]
    BusyBroken,
    /// The area could not be read or written (the VMM's memory changed under it).
    #[error("the fast-path area could not be reached")]
    Unreachable,
    /// A free stack claims more entries than it has slots (or its top is below `taken`).
    #[error("free stack holds {pending} entries in {slots} slots")]
    StackOverrun {
        /// `top - taken` as the guest wrote it.
        pending: u32,
        /// The stack's capacity.
        slots: u32,
    },
}

/// `Result` with this module's [`Corruption`].
pub type Result<T> = std::result::Result<T, Corruption>;

/// The host's record of one magazine.
#[derive(Debug, Clone)]
pub struct MagazineShadow {
    /// The head the host saw last: entries before it were popped by the guest.
    head: u32,
    /// The tail the host published.
    tail: u32,
    /// The frame the host put at each position, by `position % slots`.
    frames: Vec<u64>,
}

impl MagazineShadow {
    /// An empty magazine of `slots` entries (a power of two), at head = tail = 0.
    pub fn new(slots: u32) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self {
            head: 0,
            tail: 0,
            frames: vec![0; slots as usize],
        }
    }

    fn slots(&self) -> u32 {
        self.frames.len() as u32
    }

    /// The state word the host expects now.
    pub fn state(&self) -> u64 {
        mag_state(self.head, self.tail)
    }

    /// Frames pushed and not yet popped, as far as the host knows.
    pub fn cached(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }

    /// Free entries.
    pub fn room(&self) -> u32 {
        self.slots() - self.cached()
    }

    /// The frames still cached, as far as the host knows.
    pub fn cached_frames(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.cached()).map(|i| self.frames[self.index(self.head.wrapping_add(i))])
    }

    fn index(&self, pos: u32) -> usize {
        (pos & (self.slots() - 1)) as usize
    }

    /// Takes in the state word read from guest memory: returns the frames the guest popped
    /// since the last look, or why the word is impossible.
    pub fn observe(&mut self, state: u64) -> Result<Vec<u64>> {
        let (h, t) = (mag_head(state), mag_tail(state));
        if t != self.tail {
            return Err(Corruption::TailMoved {
                seen: t,
                ours: self.tail,
            });
        }
        let popped = h.wrapping_sub(self.head);
        if popped > self.cached() {
            return Err(Corruption::HeadOutOfRange {
                from: self.head,
                to: h,
                tail: self.tail,
            });
        }
        let out = (0..popped)
            .map(|i| self.frames[self.index(self.head.wrapping_add(i))])
            .collect();
        self.head = h;
        Ok(out)
    }

    /// Where a push of `frames` goes: `(slot index, frame)` entries to write into guest
    /// memory, then the state word to swap in for [`state`](Self::state). At most
    /// [`room`](Self::room) frames.
    pub fn plan_push(&self, frames: &[u64]) -> (Vec<(usize, u64)>, u64) {
        let n = frames.len().min(self.room() as usize);
        let entries = frames[..n]
            .iter()
            .enumerate()
            .map(|(i, &f)| (self.index(self.tail.wrapping_add(i as u32)), f))
            .collect();
        (
            entries,
            mag_state(self.head, self.tail.wrapping_add(n as u32)),
        )
    }

    /// Records a push whose swap succeeded (`frames` as planned, at most the room).
    pub fn pushed(&mut self, frames: &[u64]) {
        let n = frames.len().min(self.room() as usize);
        for &f in &frames[..n] {
            let i = self.index(self.tail);
            self.frames[i] = f;
            self.tail = self.tail.wrapping_add(1);
        }
    }

    /// The state word that takes every cached frame back: the head moves up to the tail, as
    /// if the host had popped them. Positions are never reused before the 32-bit indices wrap,
    /// so a guest pop that read its entry before the reclaim cannot swap successfully after
    /// it, even once the host has pushed again (no ABA).
    pub fn plan_reclaim(&self) -> u64 {
        mag_state(self.tail, self.tail)
    }

    /// Records a reclaim whose swap succeeded; returns the frames taken back.
    pub fn reclaimed(&mut self) -> Vec<u64> {
        let out = self.cached_frames().collect();
        self.head = self.tail;
        out
    }
}

/// The host's record of one free stack.
#[derive(Debug, Clone)]
pub struct FreeStackShadow {
    slots: u32,
    /// What the host published as `taken`: entries below it are the host's.
    taken: u32,
}

impl FreeStackShadow {
    /// A stack of `slots` entries (a power of two).
    pub fn new(slots: u32) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self { slots, taken: 0 }
    }

    /// Checks the state word read from guest memory (with the host not busy on it); returns
    /// the guest's `top`.
    pub fn observe(&self, state: u64) -> Result<u32> {
        let (top, taken) = (stack_top(state), stack_taken(state));
        if taken != self.taken {
            return Err(Corruption::TakenMoved {
                seen: taken,
                ours: self.taken,
            });
        }
        let pending = top.wrapping_sub(taken) & STACK_INDEX_MASK;
        if top & STACK_BUSY != 0 || pending > self.slots {
            return Err(Corruption::StackOverrun {
                pending,
                slots: self.slots,
            });
        }
        Ok(top)
    }

    /// Entries pending below `top`.
    pub fn pending(&self, top: u32) -> u32 {
        top.wrapping_sub(self.taken) & STACK_INDEX_MASK
    }

    /// The state word that keeps the guest off the stack while the host reads the entries
    /// below `top` (the first swap of a take).
    pub fn plan_claim(&self, top: u32) -> u64 {
        stack_state(top, self.taken | STACK_BUSY)
    }

    /// Slot indices of the entries a take up to `top` reads, oldest first.
    pub fn claimed(&self, top: u32) -> Vec<usize> {
        (0..self.pending(top))
            .map(|i| (self.taken.wrapping_add(i) & (self.slots - 1)) as usize)
            .collect()
    }

    /// The state word that ends a take up to `top` (the second swap).
    pub fn plan_release(&self, top: u32) -> u64 {
        stack_state(top, top)
    }

    /// Records a take up to `top` whose second swap succeeded.
    pub fn took(&mut self, top: u32) {
        self.taken = top;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_and_reclaim() {
        let mut m = MagazineShadow::new(4);
        let (entries, next) = m.plan_push(&[10, 11, 12, 13, 14]);
        assert_eq!(
            entries,
            vec![(0, 10), (1, 11), (2, 12), (3, 13)],
            "room for four"
        );
        assert_eq!(next, mag_state(0, 4));
        m.pushed(&[10, 11, 12, 13]);
        assert_eq!(m.observe(mag_state(2, 4)).unwrap(), vec![10, 11]);
        assert_eq!((m.cached(), m.room()), (2, 2));
        let (entries, next) = m.plan_push(&[20, 21]);
        assert_eq!(entries, vec![(0, 20), (1, 21)], "wraps around");
        assert_eq!(next, mag_state(2, 6));
        m.pushed(&[20, 21]);
        assert_eq!(m.plan_reclaim(), mag_state(6, 6));
        assert_eq!(m.reclaimed(), vec![12, 13, 20, 21]);
        assert_eq!(m.state(), mag_state(6, 6));
    }

    #[test]
    fn impossible_words_are_refused_and_change_nothing() {
        let mut m = MagazineShadow::new(8);
        m.pushed(&[1, 2, 3]);
        assert_eq!(
            m.observe(mag_state(0, 9)),
            Err(Corruption::TailMoved { seen: 9, ours: 3 })
        );
        assert!(matches!(
            m.observe(mag_state(4, 3)),
            Err(Corruption::HeadOutOfRange { .. })
        ));
        assert_eq!(m.observe(mag_state(1, 3)).unwrap(), vec![1]);
        assert!(
            matches!(
                m.observe(mag_state(0, 3)),
                Err(Corruption::HeadOutOfRange { .. })
            ),
            "a head moving back is a wrapped distance past the tail"
        );
        assert_eq!(m.state(), mag_state(1, 3));
    }

    #[test]
    fn indices_wrap_at_u32() {
        let mut m = MagazineShadow::new(4);
        m.head = u32::MAX - 1;
        m.tail = u32::MAX - 1;
        m.pushed(&[5, 6, 7]);
        assert_eq!(mag_tail(m.state()), 1);
        assert_eq!(m.observe(mag_state(0, 1)).unwrap(), vec![5, 6]);
        assert_eq!(m.cached_frames().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn free_stacks_are_taken_whole_and_checked() {
        let mut q = FreeStackShadow::new(4);
        assert_eq!(q.observe(stack_state(3, 0)), Ok(3));
        assert_eq!(q.plan_claim(3), stack_state(3, STACK_BUSY));
        assert_eq!(q.claimed(3), vec![0, 1, 2]);
        assert_eq!(q.plan_release(3), stack_state(3, 3));
        q.took(3);
        assert_eq!(q.observe(stack_state(7, 3)), Ok(7));
        assert_eq!(q.claimed(7), vec![3, 0, 1, 2]);
        q.took(7);
        assert_eq!(
            q.observe(stack_state(12, 7)),
            Err(Corruption::StackOverrun {
                pending: 5,
                slots: 4
            })
        );
        assert!(q.observe(stack_state(6, 7)).is_err(), "top below taken");
        assert_eq!(
            q.observe(stack_state(7, 2)),
            Err(Corruption::TakenMoved { seen: 2, ours: 7 })
        );
        assert!(
            q.observe(stack_state(7, 7 | STACK_BUSY)).is_err(),
            "only the host sets busy, and it never leaves it set"
        );
    }

    #[test]
    fn free_stack_indices_wrap_at_31_bits() {
        let mut q = FreeStackShadow::new(4);
        q.took(STACK_INDEX_MASK);
        assert_eq!(q.observe(stack_state(1, STACK_INDEX_MASK)), Ok(1));
        assert_eq!(q.pending(1), 2);
    }
}
