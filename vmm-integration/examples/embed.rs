//! A VMM embedding memout-server: its own vm-memory region becomes the guest's outsourced
//! memory, doorbell exits go to the server, and a refused fault stops the vCPU.
//! Runs the built-in `demo` guest; exits 0 if the guest verified its data.
use kvm_ioctls::VcpuExit;
use memout_protocol::ring::{PORT_DEBUG_STR, PORT_DOORBELL, PORT_EXIT};
use memout_server::{ChannelConfig, GuestConfig, PopulatePolicy, RegionMemory, Server};
use memout_vmm::{image::GuestImage, layout, vcpu_kick::Kick, vm::GuestVm};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !memout_vmm::vm::kvm_available() {
        return Err("memout needs KVM: /dev/kvm cannot be opened".into());
    }
    let image = GuestImage::parse(memout_vmm::images::get("demo").ok_or("no demo")?.to_vec())?;
    let mut vm = GuestVm::new()?;
    vm.boot()
        .write_slice(&image.bytes, GuestAddress(image.load_addr))?;

    // The VMM's own guest RAM region (private, anonymous, not locked), handed to memout.
    let size = 1usize << 30;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let mapping = MmapRegion::<()>::build(None, size, prot, flags)?;
    let ram = GuestRegionMmap::new(mapping, GuestAddress(layout::REGION_GPA)).ok_or("region")?;

    let kick = Arc::new(Kick::default());
    let _registered = kick.register_current_thread();
    let kicker = kick.clone();
    let server = Server::builder().build()?;
    let guest = server.add_guest(GuestConfig {
        name: "embedded".into(),
        region_gpa: layout::REGION_GPA,
        region_size: size as u64,
        quota_bytes: 256 << 20,
        policy: PopulatePolicy::Eager,
        // SAFETY: `ram` lives until the end of main, after `guest` and `vm` are dropped.
        memory: unsafe { RegionMemory::existing(ram.as_ptr() as usize) },
        eviction: memout_server::Eviction::None,
        resident_budget_bytes: None,
        min_bytes: 0,
        channel: ChannelConfig {
            ring_gpa: layout::RING,
            ring_slots: layout::RING_SLOTS,
            fastpath: None,
        },
        shared: vm.boot().clone(),
        on_fatal: Some(Box::new(move |_| kicker.kick())),
        mergeable: false,
        segments: None,
    })?;
    // SAFETY: `ram` lives until the end of main, after `vm` is dropped.
    unsafe { vm.map(layout::REGION_GPA, size as u64, ram.as_ptr() as usize)? };
    vm.setup_cpl3(image.entry, &[(layout::REGION_GPA, size as u64)])?;

    let code = loop {
        match vm.vcpu().run() {
            Ok(VcpuExit::IoOut(PORT_DOORBELL, _)) => {
                guest.on_doorbell();
            }
            Ok(VcpuExit::IoOut(PORT_DEBUG_STR, d)) => {
                let gpa = u32::from_le_bytes(d.try_into()?) as u64;
                let mut buf = [0u8; 256];
                vm.boot().read_slice(&mut buf, GuestAddress(gpa))?;
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                print!("{}", String::from_utf8_lossy(&buf[..end]));
            }
            Ok(VcpuExit::IoOut(PORT_EXIT, d)) => break u32::from_le_bytes(d.try_into()?),
            Ok(VcpuExit::IoOut(0x520, _)) => {} // demo checkpoints: nothing to record here
            Ok(other) => return Err(format!("unexpected exit {other:?}").into()),
            Err(e) if e.errno() == libc::EINTR && kick.requested() => {
                return Err(format!("guest stopped: {:?}", guest.fatal_error()).into());
            }
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(e.into()),
        }
    };
    println!("guest exit {code}; host stats: {:?}", guest.stats());
    drop(vm);
    drop(guest);
    drop(ram);
    std::process::exit(code as i32)
}
