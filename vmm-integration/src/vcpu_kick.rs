//! Getting a vCPU thread out of `KVM_RUN` from another thread: a no-op signal handler and
//! `pthread_kill`. KVM returns `EINTR` when a signal is pending, including while the vCPU is
//! blocked in a userfaultfd fault (KVM's page-fault path is interruptible), so a guest whose
//! fault the server refused can be stopped. A kick can race with the vCPU entering `KVM_RUN`,
//! so the kicker repeats it until the vCPU thread acknowledges.

use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use parking_lot::Mutex;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// The signal used for kicks.
pub const KICK_SIGNAL: Signal = Signal::SIGUSR1;

extern "C" fn noop(_: std::ffi::c_int) {}

/// Installs the no-op handler (without `SA_RESTART`) once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let sa = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing (async-signal-safe), and the process uses
        // KICK_SIGNAL for nothing else.
        // sigaction fails only for an invalid signal or handler; a kick without the handler
        // would kill the process, so there is no running on after a failure.
        unsafe { sigaction(KICK_SIGNAL, &sa) }.expect("sigaction(SIGUSR1) with a valid handler");
    });
}

/// Shared between a vCPU thread and whoever may need to stop it.
///
/// The vCPU thread registers itself and gets a [`Registration`]; while it lives, [`Kick::kick`]
/// may signal the thread. Dropping the registration (before the thread ends) takes the thread
/// out under the same lock a kick holds while it signals, so a kick never signals a thread that
/// has exited (whose `pthread_t` may already name another thread).
#[derive(Debug, Default)]
pub struct Kick {
    thread: Mutex<Option<Pthread>>,
    requested: AtomicBool,
}

/// The vCPU thread's registration with a [`Kick`]; unregisters on drop. Not `Send`: it must be
/// dropped on the thread it registered.
#[derive(Debug)]
pub struct Registration<'a> {
    kick: &'a Kick,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        *self.kick.thread.lock() = None;
    }
}

impl Kick {
    /// Called on the vCPU thread before it first runs; keep the registration until the thread
    /// stops running the vCPU.
    pub fn register_current_thread(&self) -> Registration<'_> {
        install_handler();
        *self.thread.lock() = Some(pthread_self());
        Registration {
            kick: self,
            _not_send: std::marker::PhantomData,
        }
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.requested.load(SeqCst)
    }

    /// Requests a stop and signals the vCPU thread if one is registered (call again to repeat
    /// the signal: one can arrive just before the thread enters `KVM_RUN`).
    pub fn kick(&self) {
        self.requested.store(true, SeqCst);
        let t = self.thread.lock();
        if let Some(t) = *t {
            // `t` is a registered thread; it stays registered, and so alive, while we hold the
            // lock (its registration's drop takes the same lock), so the id names no other.
            let _ = pthread_kill(t, KICK_SIGNAL);
        }
    }
}
