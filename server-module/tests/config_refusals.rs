//! The embedding API refuses dangerous or inconsistent configurations with clear errors, and
//! accepts memory the VMM mapped itself when it is of the right kind.

use memout_server::procfs::Unsuitable;
use memout_server::server::Error;
use memout_server::{
    ChannelConfig, ConfigError, GuestConfig, PopulatePolicy, RegionMemory, Server,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const GIB: u64 = 1 << 30;

fn base() -> GuestConfig {
    GuestConfig {
        name: "cfg".into(),
        region_gpa: 4 * GIB,
        region_size: 64 << 20,
        quota_bytes: 32 << 20,
        policy: PopulatePolicy::default(),
        memory: RegionMemory::allocate(),
        eviction: memout_server::Eviction::None,
        resident_budget_bytes: None,
        min_bytes: 0,
        channel: ChannelConfig {
            ring_gpa: 0x6000,
            ring_slots: 64,
            fastpath: None,
        },
        shared: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        on_fatal: None,
        mergeable: false,
        segments: None,
    }
}

/// Asserts that `cfg` is refused with a configuration error that `want` accepts.
fn refused(cfg: GuestConfig, want: impl Fn(&ConfigError) -> bool) {
    let server = Server::builder().build().unwrap();
    match server.add_guest(cfg) {
        Ok(_) => panic!("accepted a configuration that should be refused"),
        Err(Error::Config(e)) => assert!(want(&e), "refused for another reason: {e}"),
        Err(e) => panic!("not a configuration error: {e}"),
    }
}

/// An anonymous mapping for tests; unmapped on drop.
struct Map(usize, usize);

impl Map {
    fn new(len: usize, flags: i32) -> Self {
        // SAFETY: a fresh mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Map(p as usize, len)
    }
}

/// The test's mappings outlive every guest built over them (each test drops the guest first
/// or the configuration is refused before the memory is used).
fn existing(m: &Map, offset: usize) -> RegionMemory {
    // SAFETY: see above; `Map` unmaps only on drop, after the guest is gone.
    unsafe { RegionMemory::existing(m.0 + offset) }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the guest using it was dropped before.
        unsafe { libc::munmap(self.0 as *mut libc::c_void, self.1) };
    }
}

#[test]
fn refuses_bad_geometry() {
    refused(
        GuestConfig {
            quota_bytes: 65 << 20,
            ..base()
        },
        |e| matches!(e, ConfigError::QuotaAboveRegion { .. }),
    );
    refused(
        GuestConfig {
            quota_bytes: 4097,
            ..base()
        },
        |e| matches!(e, ConfigError::QuotaUnaligned(4097)),
    );
    refused(
        GuestConfig {
            region_size: 3 << 20,
            ..base()
        },
        |e| matches!(e, ConfigError::RegionSize(_)),
    );
    refused(
        GuestConfig {
            region_size: 0,
            ..base()
        },
        |e| matches!(e, ConfigError::RegionSize(0)),
    );
    refused(
        GuestConfig {
            region_gpa: 4 * GIB + 4096,
            ..base()
        },
        |e| matches!(e, ConfigError::RegionBase(_)),
    );
    refused(
        GuestConfig {
            region_gpa: (u64::MAX >> 21) << 21,
            ..base()
        },
        |e| matches!(e, ConfigError::RegionWraps),
    );
    refused(
        GuestConfig {
            channel: ChannelConfig {
                ring_gpa: 0x6000,
                ring_slots: 3,
                fastpath: None,
            },
            ..base()
        },
        |e| matches!(e, ConfigError::RingSlots(3)),
    );
    refused(
        GuestConfig {
            channel: ChannelConfig {
                ring_gpa: 0x6008,
                ring_slots: 64,
                fastpath: None,
            },
            ..base()
        },
        |e| matches!(e, ConfigError::RingAlignment(0x6008)),
    );
    refused(
        GuestConfig {
            channel: ChannelConfig {
                ring_gpa: 0xff000,
                ring_slots: 64,
                fastpath: None,
            },
            ..base()
        },
        |e| matches!(e, ConfigError::RingOutsideShared),
    );
    refused(
        GuestConfig {
            channel: ChannelConfig {
                ring_gpa: 0x5000,
                ring_slots: 1,
                fastpath: None,
            },
            ..base()
        },
        |e| matches!(e, ConfigError::RingOverlapsInfoPage),
    );
    refused(
        GuestConfig {
            region_gpa: 0,
            ..base()
        },
        |e| matches!(e, ConfigError::SharedOverlapsRegion),
    );
    assert!(matches!(
        Server::builder().eager_workers(0).build(),
        Err(Error::Config(ConfigError::EagerWorkers(0)))
    ));
    assert!(matches!(
        Server::builder().copy_chunk_pages(0).build(),
        Err(Error::Config(ConfigError::CopyChunk(0)))
    ));
}

#[test]
fn refuses_locked_shared_or_unmapped_memory() {
    let len = 64 << 20;
    let locked = Map::new(len, libc::MAP_PRIVATE);
    // SAFETY: locking our own fresh mapping.
    let r = unsafe { libc::mlock(locked.0 as *const libc::c_void, 2 << 20) };
    // Root may always mlock this much; anyone else depends on RLIMIT_MEMLOCK.
    if r != 0 && memout_test_support::require(memout_test_support::Piece::Root, "mlock refusal") {
        panic!(
            "mlock of 2 MiB failed as root: {}",
            std::io::Error::last_os_error()
        );
    }
    if r == 0 {
        refused(
            GuestConfig {
                memory: existing(&locked, 0),
                ..base()
            },
            |e| matches!(e, ConfigError::Unsuitable(Unsuitable::Locked(_))),
        );
    }
    let shared = Map::new(len, libc::MAP_SHARED);
    refused(
        GuestConfig {
            memory: existing(&shared, 0),
            ..base()
        },
        |e| matches!(e, ConfigError::Unsuitable(Unsuitable::Shared(_))),
    );
    // 64 MiB reserved, only the first 4 MiB usable: the region would run into memory that is
    // not read-write. (Whatever lies past a bare 4 MiB mapping depends on what other threads
    // mapped; "not mapped" is covered by the smaps unit test.)
    let small = Map::new(64 << 20, libc::MAP_PRIVATE);
    // SAFETY: changing the protection of our own mapping's tail, which nothing uses.
    let r = unsafe {
        libc::mprotect(
            (small.0 + (4 << 20)) as *mut libc::c_void,
            60 << 20,
            libc::PROT_NONE,
        )
    };
    assert_eq!(r, 0);
    refused(
        GuestConfig {
            memory: existing(&small, 0),
            ..base()
        },
        |e| matches!(e, ConfigError::Unsuitable(Unsuitable::NotWritable(_))),
    );
    refused(
        GuestConfig {
            memory: existing(&small, 1),
            ..base()
        },
        |e| matches!(e, ConfigError::RegionMemoryUnaligned(_)),
    );
}

#[test]
fn accepts_and_serves_existing_private_memory() {
    let mem = Map::new(64 << 20, libc::MAP_PRIVATE | libc::MAP_NORESERVE);
    let server = Server::builder().build().unwrap();
    if !memout_test_support::require(memout_test_support::Piece::Uffd, "existing memory") {
        return;
    }
    let h = server
        .add_guest(GuestConfig {
            memory: existing(&mem, 0),
            ..base()
        })
        .expect("add_guest");
    assert_eq!(h.region_host_addr(), mem.0);
    assert_eq!(h.stats().quota_pages, 8192);
    drop(h);
    // Still mapped and usable after the handle is gone: the server did not unmap it.
    // SAFETY: our own mapping, no longer registered with a userfaultfd.
    unsafe { std::ptr::write_volatile(mem.0 as *mut u64, 7) };
}

/// A mapper that is never called: these configurations are refused first.
struct NoMapper;

impl memout_server::segment::SegmentMapper for NoMapper {
    fn map(&self, _: memout_server::segment::SegmentMapping) -> std::io::Result<()> {
        unreachable!("refused before any mapping")
    }
    fn unmap(&self, _: u64) -> std::io::Result<()> {
        unreachable!("refused before any mapping")
    }
}

#[test]
fn refuses_a_segment_window_over_guest_memory_or_unaligned() {
    let window = |gpa, size| {
        Some(memout_server::segment::SegmentWindow {
            gpa,
            size,
            mapper: std::sync::Arc::new(NoMapper),
        })
    };
    let is_window = |e: &ConfigError| matches!(e, ConfigError::SegmentWindow { .. });
    for (gpa, size) in [
        (4 * GIB, GIB),            // over the region
        (0, GIB),                  // over the boot memory
        (2 * GIB + 4096, GIB),     // unaligned
        (2 * GIB, 0),              // empty
        (u64::MAX - GIB, 2 * GIB), // wraps
    ] {
        refused(
            GuestConfig {
                segments: window(gpa, size),
                ..base()
            },
            is_window,
        );
    }
    let server = Server::builder().build().unwrap();
    server
        .add_guest(GuestConfig {
            segments: window(2 * GIB, GIB),
            ..base()
        })
        .expect("a window clear of guest memory is accepted");
}
