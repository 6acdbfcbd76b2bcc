//! [`GuestHandle`]: what the VMM holds for one served guest. It forwards doorbell exits to the
//! ring and derefs to the guest's [`GuestRef`] (statistics, evict, budget, policy, resize);
//! dropping it stops the guest's fault handler and unmaps its region.

use crate::guest_ref::GuestRef;
use crate::rpc::{self, DoorbellOutcome, RingCursor};
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;
use vm_memory::GuestMemoryMmap;

/// One served guest. Dropping it stops its fault handler and unmaps its region: remove the
/// KVM memslot (or drop the VM) first.
pub struct GuestHandle {
    pub(crate) guest: GuestRef,
    pub(crate) shared: GuestMemoryMmap,
    pub(crate) ring: Mutex<RingCursor>,
    pub(crate) stop: Arc<EventFd>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl GuestHandle {
    /// Call on every doorbell exit: processes the requests the guest posted.
    pub fn on_doorbell(&self) -> DoorbellOutcome {
        let core = &self.guest.0;
        let _g = core.span().enter();
        let mut cur = self.ring.lock();
        rpc::process_doorbell(&**core, &self.shared, &mut cur)
    }
}

impl std::ops::Deref for GuestHandle {
    type Target = GuestRef;

    fn deref(&self) -> &GuestRef {
        &self.guest
    }
}

impl Drop for GuestHandle {
    fn drop(&mut self) {
        self.guest.0.cancel_resize();
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
