//! `memout run`: runs one guest image under memout's VMM and prints what the host saw.

use super::{CliError, cmd_ksm, eviction_of, load, parse_policy, print_stats, run_ksm};
use memout_server::PopulatePolicy;
use memout_vmm::cli_size;
use memout_vmm::runner::RunConfig;
use std::time::Duration;

/// `memout run`'s options.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Path to a guest image, or a built-in guest name.
    pub image: String,
    /// Outsourced region size (e.g. 4G).
    #[arg(long, default_value = "4G", value_parser = cli_size::parse)]
    pub region: u64,
    /// Quota (e.g. 1G).
    #[arg(long, default_value = "1G", value_parser = cli_size::parse)]
    pub quota: u64,
    /// Population policy: per-page, fault-around or eager.
    #[arg(long, default_value = "fault-around", value_parser = parse_policy)]
    pub policy: PopulatePolicy,
    /// Argument the guest reads from its argument port.
    #[arg(long, default_value_t = 0)]
    pub arg: u32,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Where evicted memory goes: none, store (memout's backing file) or kernel (swap).
    #[arg(long, default_value = "none")]
    pub eviction: String,
    /// Directory for the backing store file (eviction=store).
    #[arg(long, default_value = "/var/tmp")]
    pub store_dir: std::path::PathBuf,
    /// Resident budget (e.g. 128M): above it the server evicts cold memory.
    #[arg(long, value_parser = cli_size::parse)]
    pub budget: Option<u64>,
    /// The guest's name (what memoutctl calls it).
    #[arg(long, default_value = "guest")]
    pub name: String,
    /// The guest's pinned minimum: no resize may go below it.
    #[arg(long, default_value = "0", value_parser = cli_size::parse)]
    pub min: u64,
    /// Control socket path [default: $MEMOUT_RUNTIME_DIR/memout.sock or
    /// /run/memout/memout.sock].
    #[arg(long)]
    pub control: Option<std::path::PathBuf>,
    /// Serve no control socket.
    #[arg(long, conflicts_with = "control")]
    pub no_control: bool,
    /// Ask a long-running guest (e.g. `resizer`) to finish after this many seconds.
    #[arg(long)]
    pub finish_after: Option<u64>,
    /// Let KSM merge the guest's memory.
    #[arg(long)]
    pub mergeable: bool,
    /// Run the server's KSM controller: on, off or auto (ksmtuned's policy); the
    /// system's KSM settings come back when memout ends, even if it is killed.
    #[arg(long, value_parser = cmd_ksm::parse_mode)]
    pub ksm: Option<memout_server::ksm::KsmMode>,
}

/// Runs the guest; an error unless it exits 0.
pub fn run(a: RunArgs) -> Result<(), CliError> {
    let RunArgs {
        image,
        region,
        quota,
        policy,
        arg,
        timeout,
        eviction,
        store_dir,
        budget,
        name,
        min,
        control,
        no_control,
        finish_after,
        mergeable,
        ksm,
    } = a;
    let img = load(&image)?;
    let control = (!no_control)
        .then(|| control.unwrap_or_else(memout_server::control::ControlConfig::default_path));
    let cfg = RunConfig {
        eviction: eviction_of(&eviction, &store_dir, region)?,
        budget_bytes: budget,
        min_bytes: min,
        control,
        name,
        region_size: region,
        quota_bytes: quota,
        policy,
        arg,
        timeout: Duration::from_secs(timeout),
        echo: true,
        mergeable,
        ..Default::default()
    };
    if let Some(secs) = finish_after {
        let finish = cfg.finish.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            finish.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let report = run_ksm(&img, &cfg, ksm)?;
    print_stats(&report);
    if report.passed() {
        Ok(())
    } else {
        Err(CliError::Guest(report.outcome))
    }
}
