//! `memout`'s KSM options: `run --ksm on|off|auto` sets up the server's KSM controller with a
//! guard (this binary, `memout ksm-guard`) that restores the system's KSM settings if memout
//! dies without doing so itself.

use super::CliError;
use memout_server::Server;
use memout_server::ksm::{ControllerConfig, KsmMode, KsmSysfs, guard};
use std::path::PathBuf;

/// Parses `--ksm`.
pub fn parse_mode(s: &str) -> Result<KsmMode, String> {
    match s {
        "off" => Ok(KsmMode::Off),
        "on" => Ok(KsmMode::On),
        "auto" => Ok(KsmMode::Auto),
        _ => Err(format!("unknown KSM mode {s:?} (on, off, auto)")),
    }
}

/// Sets up `server`'s KSM controller with a guard process, and switches it to `mode`.
pub fn configure(server: &Server, mode: KsmMode) -> Result<(), CliError> {
    let mut cfg = ControllerConfig::system();
    let exe = std::env::current_exe().map_err(CliError::Exe)?;
    cfg.guard = Some(memout_vmm::experiment::ksm_guard_command(&exe, &cfg));
    server.configure_ksm(cfg);
    server.ksm().set_mode(mode)?;
    Ok(())
}

/// `memout ksm-guard`: waits for the memout that started it to end; unless it said it
/// restored the settings itself, restores them.
pub fn guard(saved: PathBuf, root: PathBuf) -> Result<(), CliError> {
    if let Some(s) = guard::run_guard(std::io::stdin(), &KsmSysfs::at(root), &saved)? {
        // Not eprintln!: the guard outlives the memout whose stderr it shares, and a closed
        // stderr must not turn a restore that worked into a panic.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "memout ksm-guard: memout ended without restoring KSM; restored run {}, pages_to_scan {}, sleep_millisecs {}",
            s.run,
            s.pages_to_scan,
            s.sleep_millisecs
        );
    }
    Ok(())
}
