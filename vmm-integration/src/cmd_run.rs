//! `memout run`: runs one guest image under memout's VMM and prints what the host saw.

use super::{
    CliError, StoreChoice, cmd_ksm, eviction_of, load, parse_policy, print_stats, run_ksm,
};
use memout_server::PopulatePolicy;
use memout_vmm::cli_size;
use memout_vmm::runner::{Backing, RunConfig, RunReport};
use serde_json::json;
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
    /// Parameters the guest reads from its parameter port, in order (e.g. `--param 512,1,30`;
    /// the `memwork` guest's are listed in `memout_harness.h` and `docs/experiments.md`).
    #[arg(long, value_delimiter = ',')]
    pub param: Vec<u32>,
    /// What backs the guest's region: memout, or plain (an anonymous memslot the kernel
    /// pages on demand, no memout server: a static VM, for baselines).
    #[arg(long, default_value = "memout", value_parser = ["memout", "plain"])]
    pub backing: String,
    /// Print what the host saw as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Where evicted memory goes: none, store (memout's backing file) or kernel (swap).
    #[arg(long, default_value = "none")]
    pub eviction: String,
    /// Directory for the backing store file (eviction=store).
    #[arg(long, default_value = "/var/tmp")]
    pub store_dir: std::path::PathBuf,
    /// Evict to a Redis server instead of a file (eviction=store), e.g.
    /// `redis://127.0.0.1:6379/0`, `redis://:PASSWORD@host:6379/0`, or `rediss://…` for TLS;
    /// keys are `memout:INSTANCE:GUEST:N`, deleted when the guest ends.
    #[arg(long)]
    pub store: Option<String>,
    /// CA certificates (PEM file) to trust for a `rediss://` store, instead of the system's.
    #[arg(long, requires = "store")]
    pub store_ca: Option<std::path::PathBuf>,
    /// The --store URL names one node of a Redis Cluster: each 2 MiB run's key goes to the
    /// master that owns its hash slot.
    #[arg(long, requires = "store")]
    pub store_cluster: bool,
    /// This memout instance's name in Redis keys; keys an instance of the same name left for
    /// the same guest (after a crash) are deleted at start [default: the host name].
    #[arg(long)]
    pub store_instance: Option<String>,
    /// Let the fault thread poll for the next fault this long (µs, at most 10 000) before it
    /// sleeps: faster swap-ins for CPU time.
    #[arg(long, default_value_t = 0)]
    pub fault_spin_us: u64,
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
        param,
        backing,
        json,
        timeout,
        eviction,
        store_dir,
        store,
        store_ca,
        store_cluster,
        store_instance,
        budget,
        name,
        min,
        control,
        no_control,
        finish_after,
        mergeable,
        ksm,
        fault_spin_us,
    } = a;
    let img = load(&image)?;
    let instance = store_instance.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "memout".into())
    });
    let control = (!no_control)
        .then(|| control.unwrap_or_else(memout_server::control::ControlConfig::default_path));
    let cfg = RunConfig {
        eviction: eviction_of(
            &StoreChoice {
                eviction: &eviction,
                dir: &store_dir,
                redis: store
                    .as_deref()
                    .map(|u| (u, instance.as_str(), name.as_str())),
                redis_ca: store_ca.as_deref(),
                redis_cluster: store_cluster,
            },
            region,
        )?,
        budget_bytes: budget,
        min_bytes: min,
        control,
        name,
        region_size: region,
        quota_bytes: quota,
        policy,
        arg,
        params: param,
        backing: if backing == "plain" {
            Backing::Plain {
                discard_at_exit: false,
                populate_ahead: false,
            }
        } else {
            Backing::Memout
        },
        timeout: Duration::from_secs(timeout),
        echo: !json,
        mergeable,
        fault_spin: Duration::from_micros(fault_spin_us),
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
    if json {
        println!("{}", report_json(&report));
    } else {
        print_stats(&report);
    }
    if report.passed() {
        Ok(())
    } else {
        Err(CliError::Guest(report.outcome))
    }
}

/// What `--json` prints: the outcome, the guest's output, its checkpoints (host time since the
/// start, region RSS), the host's figures, and the CPU time (user + system) this process used
/// in all its threads.
fn report_json(r: &RunReport) -> serde_json::Value {
    use nix::sys::resource::{UsageWho, getrusage};
    let s = &r.stats;
    let cpu_s = getrusage(UsageWho::RUSAGE_SELF).ok().map(|u| {
        let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    });
    json!({
        "cpu_s": cpu_s,
        "passed": r.passed(),
        "outcome": r.outcome.to_string(),
        "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
        "output": r.output,
        "checkpoints": r.checkpoints.iter().map(|c| json!({
            "id": c.id,
            "at_ms": c.at.as_secs_f64() * 1e3,
            "region_rss": c.region_rss,
        })).collect::<Vec<_>>(),
        "region_rss": r.region_rss,
        "exits": r.exits.total,
        "stats": {
            "resident_pages": s.resident_pages,
            "faults": s.faults,
            "evictions_pages": s.evictions_pages,
            "swapins_pages": s.swapins_pages,
            "swapin_p50_ns": s.swapin_p50_ns,
            "swapin_p99_ns": s.swapin_p99_ns,
            "store_bytes": s.store_bytes,
            "evict_errors": s.evict_errors,
        },
    })
}
