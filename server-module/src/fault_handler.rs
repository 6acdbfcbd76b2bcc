//! The fault-handler thread of one guest: waits on the guest's userfaultfd and a stop
//! eventfd, serves missing-page faults through `GuestCore::resolve_fault`, and passes
//! write-protect faults (writes during an eviction) to `GuestCore::resolve_wp_fault`. One thread per guest, so a slow populate for one guest never delays another.
//! Optionally it polls for the next fault for a while before sleeping (`set_fault_spin`).

use crate::guest::{GuestCore, Resolution};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use userfaultfd::{Event, EventBuffer, FaultKind};

/// The longest a fault thread may poll for the next fault before sleeping
/// ([`GuestRef::set_fault_spin`](crate::GuestRef::set_fault_spin)).
pub const MAX_FAULT_SPIN: std::time::Duration = std::time::Duration::from_millis(10);

/// Polls `fds`: first without sleeping, again and again for up to `spin`, then blocking for
/// `timeout`. The spin saves the sleeping thread's wake-up when the next fault comes soon.
fn poll_spinning(
    fds: &mut [PollFd],
    spin: std::time::Duration,
    timeout: PollTimeout,
) -> nix::Result<i32> {
    if !spin.is_zero() {
        let until = std::time::Instant::now() + spin;
        loop {
            let n = poll(fds, PollTimeout::ZERO)?;
            if n > 0 {
                return Ok(n);
            }
            if std::time::Instant::now() >= until {
                break;
            }
            std::hint::spin_loop();
        }
    }
    poll(fds, timeout)
}

/// Starts the handler thread; it runs until `stop` is signalled.
pub fn spawn(core: Arc<GuestCore>, stop: Arc<EventFd>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("memout-uffd-{}", core.name()))
        .spawn(move || run(&core, &stop))
}

fn run(core: &GuestCore, stop: &EventFd) {
    let _span = core.span().clone().entered();
    let mut buf = EventBuffer::new(64);
    let mut pending: VecDeque<Fault> = VecDeque::new();
    loop {
        let (uffd_ready, stop_ready) = {
            let mut fds = [
                PollFd::new(core.uffd().as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            // Kernel-mode budgets need a clock: the kernel swaps pages back in without a fault
            // memout could see, so what is really in RAM is checked on every tick.
            let timeout = if core.needs_budget_tick() {
                PollTimeout::from(crate::guest::KERNEL_BUDGET_TICK.as_millis() as u16)
            } else {
                PollTimeout::NONE
            };
            match poll_spinning(&mut fds, core.fault_spin(), timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    core.stop(crate::guest::GuestFault::Poll(e));
                    return;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if stop_ready {
            return;
        }
        if !uffd_ready {
            if core.needs_budget_tick() {
                core.budget_tick();
            }
            continue;
        }
        // Read everything pending, then serve; a Retry means REMOVE events are pending, so go
        // back to reading before serving that fault again.
        loop {
            if !drain(core, &mut buf, &mut pending) {
                return;
            }
            let mut retry = false;
            while let Some(fault) = pending.pop_front() {
                let addr = match fault {
                    Fault::WriteProtect(addr) => {
                        core.resolve_wp_fault(addr);
                        continue;
                    }
                    Fault::Missing(addr) => addr,
                };
                if core.resolve_fault(addr) == Resolution::Retry {
                    pending.push_front(fault);
                    retry = true;
                    break;
                }
            }
            if !retry {
                break;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Missing(usize),
    WriteProtect(usize),
}

/// Reads pending events and queues the faults. `false` if the uffd broke.
fn drain(core: &GuestCore, buf: &mut EventBuffer, pending: &mut VecDeque<Fault>) -> bool {
    let events = match core.uffd().read_events(buf) {
        Ok(ev) => ev,
        Err(e) => {
            core.stop(crate::guest::GuestFault::Uffd(e.into()));
            return false;
        }
    };
    for ev in events {
        match ev {
            Ok(Event::Pagefault {
                kind: FaultKind::WriteProtected,
                addr,
                ..
            }) => pending.push_back(Fault::WriteProtect(addr as usize)),
            Ok(Event::Pagefault { addr, .. }) => pending.push_back(Fault::Missing(addr as usize)),
            Ok(other) => tracing::debug!("ignoring userfaultfd event {other:?}"),
            Err(e) => tracing::warn!("bad userfaultfd event: {e}"),
        }
    }
    true
}
