//! Thread priority for experiments: the nice value of the calling thread (Linux keeps one per
//! thread, so a vCPU thread can run at a different priority from the rest of the VMM).

/// Sets the calling thread's nice value (-20..19; below 0 needs `CAP_SYS_NICE`).
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority only reads its three integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
pub fn current_thread_nice() -> std::io::Result<i32> {
    let tid = nix::unistd::gettid().as_raw();
    nix::errno::Errno::clear();
    // SAFETY: getpriority only reads its two integer arguments.
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    match nix::errno::Errno::last_raw() {
        0 => Ok(r),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_lower_its_own_priority() {
        std::thread::spawn(|| {
            set_current_thread_nice(7).unwrap();
            assert_eq!(current_thread_nice().unwrap(), 7);
        })
        .join()
        .unwrap();
        assert_ne!(current_thread_nice().unwrap(), 7, "only that thread");
    }
}
