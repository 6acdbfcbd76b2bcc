//! Getting a vCPU thread out of `KVM_RUN` from another thread: a no-op signal handler and
//! `pthread_kill`. KVM returns `EINTR` when a signal is pending, including while the vCPU is
//! blocked in a userfaultfd fault (KVM's page-fault path is interruptible), so a guest whose
//! fault the server refused can be stopped. A kick can race with the vCPU entering `KVM_RUN`,
//! so the kicker repeats it until the vCPU thread acknowledges.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// The signal used for kicks.
pub fn kick_signal() -> i32 {
    libc::SIGUSR1
}

extern "C" fn noop(_: libc::c_int) {}

/// Installs the no-op handler (without `SA_RESTART`) once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; we set a handler that does
        // nothing (async-signal-safe) and no flags, and pass valid pointers.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Shared between a vCPU thread and whoever may need to stop it.
#[derive(Debug, Default)]
pub struct Kick {
    thread: AtomicU64,
    requested: AtomicBool,
}

impl Kick {
    /// Called on the vCPU thread before it first runs.
    pub fn register_current_thread(&self) {
        install_handler();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.thread.store(me as u64, SeqCst);
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.requested.load(SeqCst)
    }

    /// Requests a stop and signals the vCPU thread (call again to repeat the signal).
    pub fn kick(&self) {
        self.requested.store(true, SeqCst);
        let t = self.thread.load(SeqCst);
        if t != 0 {
            // SAFETY: `t` is the pthread_t of the vCPU thread, which outlives every kick: the
            // runner joins the kicker before the vCPU thread returns.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}
