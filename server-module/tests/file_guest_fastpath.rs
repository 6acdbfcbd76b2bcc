//! A file-backed guest's exit-free fast path, with the guest's side played by hand on the
//! channel: the host refills magazines only once asked and only within the quota, with frames
//! the guest gave back and their memory allocated ahead; it takes free stacks back (refusing
//! entries that are not the guest's) once the guest idles; a resize shrink reclaims the
//! cached frames first.

mod file_guest_support;

use file_guest_support::{Driver, MIB, ext};
use memout_protocol::fastpath::{
    FASTPATH_MAGIC, FastPathHeader, MAG_STATE_OFFSET, STACK_STATE_OFFSET, free_stack_size,
    magazine_size,
};
use memout_protocol::ring::{
    ALLOC_FASTPATH_EMPTY, ALLOC_PARTIAL, Descriptor, FEATURE_FASTPATH, InfoPage, Opcode, PAGE_SIZE,
    Status,
};
use memout_server::ResizeOptions;
use memout_server::file_guest::{CHANNEL_GPA, FileGuest};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

/// The guest's view of the area: where magazine and free stack `cpu` are.
struct Area {
    mem: GuestMemoryMmap,
    mags: u64,
    stacks: u64,
}

impl Area {
    fn word<T>(&self, gpa: u64, f: impl FnOnce(&AtomicU64) -> T) -> T {
        let s = self.mem.get_slice(GuestAddress(gpa), 8).unwrap();
        f(s.get_atomic_ref::<AtomicU64>(0).unwrap())
    }

    fn mag(&self, cpu: u64) -> u64 {
        self.mags + cpu * magazine_size()
    }

    fn stack(&self, cpu: u64) -> u64 {
        self.stacks + cpu * free_stack_size()
    }

    /// Frames cached in magazine `cpu`.
    fn cached(&self, cpu: u64) -> u64 {
        let s = self.word(self.mag(cpu) + MAG_STATE_OFFSET as u64, |w| w.load(SeqCst));
        ((s >> 32) as u32).wrapping_sub(s as u32) as u64
    }

    /// Pops a frame from magazine `cpu`, as the guest does.
    fn pop(&self, cpu: u64) -> Option<u64> {
        let at = self.mag(cpu) + MAG_STATE_OFFSET as u64;
        let s = self.word(at, |w| w.load(SeqCst));
        let (head, tail) = (s as u32, (s >> 32) as u32);
        if head == tail {
            return None;
        }
        let e: u64 = self
            .mem
            .read_obj(GuestAddress(self.mag(cpu) + 64 + (head % 512) as u64 * 8))
            .unwrap();
        let next = ((tail as u64) << 32) | head.wrapping_add(1) as u64;
        self.word(at, |w| w.compare_exchange(s, next, SeqCst, SeqCst))
            .ok()
            .map(|_| e)
    }

    /// Pushes `gpa` on free stack `cpu`, as the guest does.
    fn push(&self, cpu: u64, gpa: u64) {
        let at = self.stack(cpu) + STACK_STATE_OFFSET as u64;
        let s = self.word(at, |w| w.load(SeqCst));
        let (top, taken) = (s as u32, (s >> 32) as u32);
        assert_eq!(taken >> 31, 0, "not while the host takes");
        self.mem
            .write_obj(
                gpa,
                GuestAddress(self.stack(cpu) + 64 + (top % 512) as u64 * 8),
            )
            .unwrap();
        let next = ((taken as u64) << 32) | (top + 1) as u64;
        self.word(at, |w| w.compare_exchange(s, next, SeqCst, SeqCst))
            .unwrap();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn magazines_fill_within_the_quota_and_a_shrink_reclaims_them() {
    let g = FileGuest::create("fp", std::path::Path::new("/dev/shm"), 64 * MIB)
        .expect("RAM file in /dev/shm")
        .with_fastpath(2)
        .unwrap();
    let mut d = Driver::with(g);
    let _service = d.g.serve_fastpath().unwrap();
    let mem = d.g.channel().memory().clone();
    let mut b = [0u8; InfoPage::SIZE];
    mem.read_slice(&mut b, GuestAddress(CHANNEL_GPA)).unwrap();
    let info = InfoPage::from_bytes(&b);
    assert_ne!(info.features & FEATURE_FASTPATH, 0);
    let mut b = [0u8; FastPathHeader::SIZE];
    mem.read_slice(&mut b, GuestAddress(info.fastpath_gpa))
        .unwrap();
    let h = FastPathHeader::from_bytes(&b);
    assert_eq!((h.magic, h.nr_cpus), (FASTPATH_MAGIC, 2));
    let area = Area {
        mem,
        mags: h.mags_gpa,
        stacks: h.stacks_gpa,
    };

    // The balloon gives 16 MiB back; nothing is granted ahead until the guest asks.
    assert_eq!(d.free(&[ext(32 * MIB, 16 * MIB)], 0).status, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(area.cached(0) + area.cached(1), 0);
    let before = d.g.stats().resident_pages;
    let r = d.submit(Descriptor {
        opcode: Opcode::Alloc as u16,
        flags: ALLOC_PARTIAL | ALLOC_FASTPATH_EMPTY,
        pages: 1,
        nr_extents: 1,
        extents_gpa: d.scratch,
        ..Default::default()
    });
    assert_eq!((r.status, r.pages), (Status::Ok as u32, 1));
    wait_until("full magazines", || {
        area.cached(0) == 512 && area.cached(1) == 512
    });
    let s = d.g.stats();
    assert_eq!(s.allocated_pages, 12288 + 1 + 1024, "{s:?}");
    assert!(
        s.resident_pages >= before + 1000,
        "populated ahead: {before} -> {}",
        s.resident_pages
    );

    // Popped frames are ones the balloon gave back, and read zero.
    let ram = std::fs::File::open(d.g.ram().path()).unwrap();
    let mut popped = Vec::new();
    for _ in 0..10 {
        let gpa = area.pop(0).expect("a frame");
        assert!((32 * MIB..48 * MIB).contains(&gpa) && gpa % PAGE_SIZE == 0);
        let mut page = vec![1u8; PAGE_SIZE as usize];
        ram.read_exact_at(&mut page, gpa).unwrap();
        assert!(page.iter().all(|b| *b == 0), "frame {gpa:#x} reads zero");
        popped.push(gpa);
    }
    // Freed on the stack with one entry that is not the guest's: taken once idle, the bad
    // entry refused.
    for gpa in &popped {
        area.push(1, *gpa);
    }
    area.push(1, 64 * MIB);
    wait_until("the stack taken", || {
        d.g.fastpath_stats().unwrap().returned_pages == 10
    });
    let f = d.g.fastpath_stats().unwrap();
    assert_eq!((f.refused_entries, f.stopped), (1, None), "{f:?}");

    // A shrink takes the cached frames back before asking the guest for anything.
    let held = d.g.stats().allocated_pages;
    d.g.resize(48 * MIB, ResizeOptions::default()).unwrap();
    let f = d.g.fastpath_stats().unwrap();
    assert_eq!(f.reclaimed_pages, 1024 - 10, "{f:?}");
    assert_eq!(area.cached(0) + area.cached(1), 0);
    assert_eq!(d.g.stats().allocated_pages, held - (1024 - 10));
}
