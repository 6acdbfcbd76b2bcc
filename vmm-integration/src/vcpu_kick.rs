//! Getting a vCPU thread out of `KVM_RUN` from another thread: a no-op signal handler and
//! `pthread_kill`. KVM returns `EINTR` when a signal is pending, including while the vCPU is
//! blocked in a userfaultfd fault (KVM's page-fault path is interruptible), so a guest whose
//! fault the server refused can be stopped. A kick can race with the vCPU entering `KVM_RUN`,
//! so the kicker repeats it until the vCPU thread acknowledges.

use parking_lot::Mutex;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

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
///
/// The vCPU thread registers itself and gets a [`Registration`]; while it lives, [`Kick::kick`]
/// may signal the thread. Dropping the registration (before the thread ends) takes the thread
/// out under the same lock a kick holds while it signals, so a kick never signals a thread that
/// has exited (whose `pthread_t` may already name another thread).
#[derive(Debug, Default)]
pub struct Kick {
    thread: Mutex<Option<libc::pthread_t>>,
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
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock() = Some(me);
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
            // SAFETY: `t` is the pthread_t of a registered thread; it stays registered, and so
            // alive, while we hold the lock (its registration's drop takes the same lock).
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }
}
