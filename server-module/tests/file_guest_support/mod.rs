//! Drives a file-backed guest's ring by hand, as the Linux module would (shared by the
//! file-guest test files).

#![allow(dead_code)] // each test file uses part of it

use memout_protocol::ring::{
    Descriptor, Extent, InfoPage, Opcode, PAGE_SIZE, RING_REQ_PROD_OFFSET, RingHeader, Status,
};
use memout_server::file_guest::{CHANNEL_GPA, Channel, FileGuest};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

pub const MIB: u64 = 1 << 20;

pub struct Driver {
    pub g: Arc<FileGuest>,
    prod: u32,
    pub scratch: u64,
}

impl Driver {
    pub fn new(ram: u64) -> Self {
        Self::with(
            FileGuest::create("t", std::path::Path::new("/dev/shm"), ram)
                .expect("RAM file in /dev/shm"),
        )
    }

    pub fn with(g: FileGuest) -> Self {
        let g = Arc::new(g);
        let mut b = [0u8; InfoPage::SIZE];
        g.channel()
            .memory()
            .read_slice(&mut b, GuestAddress(CHANNEL_GPA))
            .unwrap();
        let info = InfoPage::from_bytes(&b);
        assert_eq!(info.info_gpa, CHANNEL_GPA);
        assert_eq!(info.region_size, g.ram().size());
        let mut d = Self {
            g,
            prod: 0,
            scratch: info.scratch_gpa,
        };
        let h = d.submit(Descriptor {
            opcode: Opcode::Hello as u16,
            arg0: 1,
            ..Default::default()
        });
        assert_eq!(h.status, Status::Ok as u32);
        d
    }

    pub fn submit(&mut self, d: Descriptor) -> Descriptor {
        let mem = self.g.channel().memory();
        let slot = Channel::ring_gpa()
            + RingHeader::SIZE as u64
            + (self.prod % 32) as u64 * Descriptor::SIZE as u64;
        mem.write_slice(&d.to_bytes(), GuestAddress(slot)).unwrap();
        self.prod += 1;
        mem.write_obj(
            self.prod,
            GuestAddress(Channel::ring_gpa() + RING_REQ_PROD_OFFSET as u64),
        )
        .unwrap();
        self.g.on_doorbell();
        let mut b = [0u8; Descriptor::SIZE];
        mem.read_slice(&mut b, GuestAddress(slot)).unwrap();
        Descriptor::decode(&b)
    }

    pub fn free(&mut self, list: &[Extent], flags: u16) -> Descriptor {
        let mem = self.g.channel().memory();
        for (i, e) in list.iter().enumerate() {
            mem.write_slice(&e.to_bytes(), GuestAddress(self.scratch + i as u64 * 16))
                .unwrap();
        }
        self.submit(Descriptor {
            opcode: Opcode::Free as u16,
            flags,
            nr_extents: list.len() as u32,
            extents_gpa: self.scratch,
            ..Default::default()
        })
    }

    /// Writes `bytes` of non-zero data at `offset` of the RAM file, as the guest would.
    pub fn touch(&self, offset: u64, bytes: u64) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.g.ram().path())
            .unwrap();
        f.write_all_at(&vec![0xa5; bytes as usize], offset).unwrap();
    }

    pub fn resident(&self) -> u64 {
        self.g.stats().resident_pages * PAGE_SIZE
    }
}

pub fn ext(gpa: u64, bytes: u64) -> Extent {
    Extent {
        gpa,
        pages: bytes / PAGE_SIZE,
    }
}
