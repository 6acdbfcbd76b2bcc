//! `memout`: runs memout guests on KVM, and shows what the host saw.

use clap::{Parser, Subcommand};
use memout_server::{PopulatePolicy, Server};
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{self, RunConfig, RunReport};
use std::process::ExitCode;

mod cmd_experiment;
mod cmd_ksm;
mod cmd_qemu;
mod cmd_run;

#[derive(Parser)]
#[command(
    name = "memout",
    version,
    about = "Outsource a KVM guest's memory management to the host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the demo guest: allocate 64 MiB from the host, verify, free half, verify again.
    Demo {
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Run a guest image (a file, or the name of a built-in guest such as `demo`).
    Run(cmd_run::RunArgs),
    /// Run an experiment and write its CSV, charts, summary and manifest.
    Experiment(cmd_experiment::ExperimentArgs),
    /// (internal) Restores the system's KSM settings when the memout that started it ends
    /// without doing so.
    #[command(hide = true)]
    KsmGuard {
        /// The saved settings.
        #[arg(long)]
        saved: std::path::PathBuf,
        /// KSM's sysfs directory.
        #[arg(long, default_value = memout_server::ksm::sysfs::SYSTEM_ROOT)]
        root: std::path::PathBuf,
    },
    /// Measure memout against its baseline in the same run.
    Bench {
        /// Scenario: populate, rpc, shrink, swap, resize, linux-free (a Linux guest under
        /// QEMU frees 256 MiB: memout.ko vs virtio-balloon free page reporting), fastpath
        /// (single pages without a VM exit vs a doorbell exit, and vs a static VM) or shared
        /// (4 guests see one object: a shared segment vs KSM merging the same bytes).
        scenario: String,
        /// Size in MiB (populate: 256, shrink: 1024, swap: 512, resize: 1024 shrunk to a quarter,
        /// linux-free: 256 of a 1 GiB guest, shared: 64).
        #[arg(long)]
        mib: Option<u64>,
        /// Measured rounds per side, after one warm-up round.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
        /// Directory for backing-store, baseline and swap files (swap).
        #[arg(long, default_value = "/var/tmp")]
        dir: std::path::PathBuf,
        /// Percentage of zero pages in the swapped memory (swap); the rest is random data.
        #[arg(long, default_value_t = 10)]
        zero_pct: u32,
        /// Swap to a Redis server (`redis://HOST:PORT/DB`) and compare with raw pipelined
        /// SET/GET of the same bytes on it, instead of the file store and kernel swap.
        #[arg(long)]
        store: Option<String>,
    },
    /// List the built-in guest images.
    Guests,
    /// Serve a Linux guest that runs under QEMU (memout.ko over ivshmem-doorbell): prints the
    /// QEMU options it needs and serves until Ctrl-C; with QEMU arguments after `--` (kernel,
    /// console, ...), starts qemu-system-x86_64 itself and serves until it exits.
    Qemu(cmd_qemu::QemuArgs),
}

/// Why a `memout` command failed (printed after `memout: `, exit status 1).
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// No usable /dev/kvm.
    #[error("memout needs KVM to run guests, and /dev/kvm cannot be opened")]
    NoKvm,
    #[error(transparent)]
    Image(#[from] memout_vmm::image::Error),
    #[error(transparent)]
    Server(#[from] memout_server::server::Error),
    #[error(transparent)]
    Run(#[from] runner::Error),
    #[error(transparent)]
    Bench(#[from] memout_vmm::bench::Error),
    #[error("cannot create a backing store in {dir}: {source}")]
    Store {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    RedisStore(#[from] memout_server::redis_store::Error),
    #[error("cannot read --store-ca {path}: {source}")]
    StoreCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--store {0:?}: only redis:// and rediss:// stores exist (a directory goes to --store-dir)"
    )]
    UnknownStore(String),
    #[error("unknown eviction {0:?} (none, store, kernel)")]
    UnknownEviction(String),
    #[error(
        "unknown scenario {0:?} (populate, rpc, shrink, swap, resize, linux-free, fastpath, shared)"
    )]
    UnknownScenario(String),
    #[error("--rounds {0} is outside 1..=1000")]
    Rounds(usize),
    #[error("--mib must be in 1..=65536")]
    Mib,
    /// The guest did not exit 0.
    #[error("{0}")]
    Guest(runner::Outcome),
    #[error("host RSS did not drop after the guest freed memory")]
    RssDidNotDrop,
    #[error(transparent)]
    Qemu(#[from] memout_vmm::qemu::run::Error),
    #[error(transparent)]
    Ksm(#[from] memout_server::ksm::controller::Error),
    #[error(transparent)]
    KsmGuard(#[from] memout_server::ksm::guard::Error),
    #[error("cannot find memout's own executable: {0}")]
    Exe(#[source] std::io::Error),
    #[error(transparent)]
    Experiment(#[from] memout_vmm::experiment::Error),
    #[error("unknown experiment {0:?} (ksm, swap-pressure, interference)")]
    UnknownExperiment(String),
    #[error("--repeat {0} is outside 1..=20")]
    Repeat(usize),
}

/// Where a guest's evicted memory goes (`memout run --eviction --store-dir --store`).
struct StoreChoice<'a> {
    eviction: &'a str,
    dir: &'a std::path::Path,
    /// A Redis URL, with the instance name and the guest's name for its keys.
    redis: Option<(&'a str, &'a str, &'a str)>,
    /// A PEM file of CA certificates to trust for `rediss://`.
    redis_ca: Option<&'a std::path::Path>,
    /// The URL names a Redis Cluster node.
    redis_cluster: bool,
}

fn eviction_of(c: &StoreChoice, region: u64) -> Result<memout_server::Eviction, CliError> {
    let dir = c.dir;
    match (c.eviction, c.redis) {
        ("none", _) => Ok(memout_server::Eviction::None),
        ("kernel", _) => Ok(memout_server::Eviction::Kernel),
        ("store", Some((url, instance, guest))) => {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(CliError::UnknownStore(
                    memout_server::redis_store::keys::redact(url),
                ));
            }
            let mut cfg =
                memout_server::redis_store::RedisStoreConfig::new(url, instance, guest, region);
            cfg.cluster = c.redis_cluster;
            if let Some(path) = c.redis_ca {
                cfg.ca_pem = Some(std::fs::read(path).map_err(|source| CliError::StoreCa {
                    path: path.to_path_buf(),
                    source,
                })?);
            }
            let s = memout_server::redis_store::RedisStore::connect(&cfg)?;
            Ok(memout_server::Eviction::Store(std::sync::Arc::new(s)))
        }
        ("store", None) => memout_server::FileStore::create(dir, "guest", region)
            .map(|s| memout_server::Eviction::Store(std::sync::Arc::new(s)))
            .map_err(|source| CliError::Store {
                dir: dir.to_path_buf(),
                source,
            }),
        (other, _) => Err(CliError::UnknownEviction(other.to_string())),
    }
}

fn parse_policy(s: &str) -> Result<PopulatePolicy, String> {
    PopulatePolicy::parse(s)
        .ok_or_else(|| format!("unknown policy {s:?} (per-page, fault-around, eager)"))
}

fn load(image: &str) -> Result<GuestImage, CliError> {
    let r = match memout_vmm::images::get(image) {
        Some(b) if !std::path::Path::new(image).exists() => GuestImage::parse(b.to_vec()),
        _ => GuestImage::from_file(std::path::Path::new(image)),
    };
    Ok(r?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMOUT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Demo { json } => demo(json),
        Cmd::Run(args) => cmd_run::run(args),
        Cmd::Bench {
            scenario,
            mib,
            rounds,
            json,
            dir,
            zero_pct,
            store,
        } => bench(&scenario, mib, rounds, json, dir, zero_pct, store),
        Cmd::Qemu(args) => cmd_qemu::run(args).map_err(CliError::from),
        Cmd::KsmGuard { saved, root } => cmd_ksm::guard(saved, root),
        Cmd::Experiment(args) => cmd_experiment::run(args),
        Cmd::Guests => {
            for (name, bytes) in memout_vmm::images::ALL {
                println!("{name:<12} {:>8} bytes", bytes.len());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(img: &GuestImage, cfg: &RunConfig) -> Result<RunReport, CliError> {
    run_ksm(img, cfg, None)
}

/// Runs the guest; with `ksm`, the server's KSM controller runs in that mode meanwhile.
fn run_ksm(
    img: &GuestImage,
    cfg: &RunConfig,
    ksm: Option<memout_server::ksm::KsmMode>,
) -> Result<RunReport, CliError> {
    if !memout_vmm::vm::kvm_available() {
        return Err(CliError::NoKvm);
    }
    let server = Server::builder().build()?;
    if let Some(mode) = ksm {
        cmd_ksm::configure(&server, mode)?;
    }
    Ok(runner::run_guest(&server, img, cfg)?)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print_stats(r: &RunReport) {
    let s = &r.stats;
    println!(
        "host: {:.1} MiB allocated, {:.1} MiB resident (RSS {:.1} MiB), {} faults, {} pages populated, {:.1} MiB returned, {} violations, {:.1} ms\n      eviction {}: {:.1} MiB evicted now, {:.1} MiB evicted in all, {:.1} MiB swapped in, swap-in p50 {} us p99 {} us, store {:.1} MiB on disk, {} errors{}",
        mib(s.allocated_pages * 4096),
        mib(s.resident_pages * 4096),
        mib(r.region_rss),
        s.faults,
        s.populated_pages,
        mib(s.bytes_returned),
        s.violations,
        r.elapsed.as_secs_f64() * 1e3,
        s.eviction_mode,
        mib(s.evicted_pages * 4096),
        mib(s.evictions_pages * 4096),
        mib(s.swapins_pages * 4096),
        s.swapin_p50_ns / 1000,
        s.swapin_p99_ns / 1000,
        mib(s.store_bytes),
        s.evict_errors,
        s.last_evict_error
            .as_ref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    println!(
        "      VM exits {} ({} doorbells){}",
        r.exits.total,
        r.exits.doorbells,
        s.fastpath
            .map(|f| format!(
                "; fast path: {} pages granted ahead, {} taken back from free stacks, {} reclaimed{}",
                f.granted_pages,
                f.returned_pages,
                f.reclaimed_pages,
                f.stopped.map(|c| format!(", stopped: {c}")).unwrap_or_default()
            ))
            .unwrap_or_default()
    );
}

fn demo(json: bool) -> Result<(), CliError> {
    let img = load("demo")?;
    let cfg = RunConfig {
        name: "demo".into(),
        quota_bytes: 256 << 20,
        echo: !json,
        ..Default::default()
    };
    let r = run(&img, &cfg)?;
    const STEPS: [&str; 4] = [
        "start",
        "64 MiB written",
        "32 MiB freed",
        "32 MiB re-allocated",
    ];
    if !json {
        println!(
            "\n{:<22} {:>9} {:>12} {:>12} {:>12} {:>8}",
            "step", "time ms", "host RSS MiB", "allocated", "resident", "faults"
        );
        for c in &r.checkpoints {
            println!(
                "{:<22} {:>9.2} {:>12.1} {:>12.1} {:>12.1} {:>8}",
                STEPS.get(c.id as usize).unwrap_or(&"?"),
                c.at.as_secs_f64() * 1e3,
                mib(c.region_rss),
                mib(c.stats.allocated_pages * 4096),
                mib(c.stats.resident_pages * 4096),
                c.stats.faults
            );
        }
        print_stats(&r);
    }
    let rss = |id: u32| {
        r.checkpoints
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.region_rss)
    };
    let (before, after) = (rss(1), rss(2));
    if json {
        let v = serde_json::json!({
            "passed": r.passed(),
            "outcome": r.outcome.to_string(),
            "rss_before_free_bytes": before,
            "rss_after_free_bytes": after,
            "faults": r.stats.faults,
            "populated_pages": r.stats.populated_pages,
            "bytes_returned": r.stats.bytes_returned,
            "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
        });
        println!("{v}");
    } else if let (Some(b), Some(a)) = (before, after) {
        println!(
            "host RSS of the outsourced region: {:.1} MiB before the free, {:.1} MiB after",
            mib(b),
            mib(a)
        );
    }
    if !r.passed() {
        return Err(CliError::Guest(r.outcome));
    }
    match (before, after) {
        (Some(b), Some(a)) if a < b => Ok(()),
        _ => Err(CliError::RssDidNotDrop),
    }
}

fn bench(
    scenario: &str,
    mib: Option<u64>,
    rounds: usize,
    json: bool,
    dir: std::path::PathBuf,
    zero_pct: u32,
    store: Option<String>,
) -> Result<(), CliError> {
    use memout_vmm::bench;
    if rounds == 0 || rounds > 1000 {
        return Err(CliError::Rounds(rounds));
    }
    if mib.is_some_and(|m| m == 0 || m > 64 << 10) {
        return Err(CliError::Mib);
    }
    type Scenario = fn(&bench::BenchOpts) -> bench::Result<bench::BenchResult>;
    let run: Scenario = match scenario {
        "populate" => bench::populate,
        "rpc" => bench::rpc,
        "shrink" => bench::shrink,
        "swap" => bench::swap,
        "resize" => bench::resize::run,
        "linux-free" => bench::linux_free::run,
        "fastpath" => bench::fastpath::fastpath,
        "shared" => bench::shared::run,
        other => return Err(CliError::UnknownScenario(other.to_string())),
    };
    // linux-free runs its guests under QEMU's software emulation, not KVM.
    if scenario != "linux-free" && !memout_vmm::vm::kvm_available() {
        return Err(CliError::NoKvm);
    }
    let result = run(&bench::BenchOpts {
        mib,
        rounds,
        dir,
        zero_pct,
        ksm_guard: std::env::current_exe().ok(),
        store,
    })?;
    if json {
        println!("{}", result.to_json());
    } else {
        result.print_table();
    }
    Ok(())
}
