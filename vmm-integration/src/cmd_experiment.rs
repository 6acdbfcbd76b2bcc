//! `memout experiment NAME`: runs an experiment (see `memout_vmm::experiment`) and says where
//! its results are.

use super::CliError;
use memout_vmm::experiment::{self, GuestKind, Options};
use std::io::IsTerminal;
use std::path::PathBuf;

/// `memout experiment`'s options.
#[derive(clap::Args)]
pub struct ExperimentArgs {
    /// Which: ksm (seed 000: host memory with KSM off and on, 1–4 guests, three focuses), or
    /// swap-pressure (throughput under a resident budget, memout's store vs kernel swap), or
    /// interference (seed 004: a target guest beside 0–16 dummies, nice 0 and −5).
    pub name: String,
    /// Where the results go [default: memout-results/NAME].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The CI-sized run (fewer guests, smaller working sets, shorter bounds).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each measurement (the figures are the medians).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Overwrite a directory that already holds results.
    #[arg(long)]
    pub force: bool,
    /// Which guests run (ksm): memout's KVM guests, Linux guests under QEMU, or both.
    #[arg(long, value_delimiter = ',', default_value = "memout,linux")]
    pub guests: Vec<GuestKind>,
    /// Where scratch files go (swap-pressure: memout's store and a temporary swapfile).
    #[arg(long, default_value = "/var/tmp")]
    pub scratch_dir: PathBuf,
    /// swap-pressure: also evict to this Redis server (`redis://HOST:PORT/DB`), a third mode.
    #[arg(long)]
    pub redis: Option<String>,
}

/// Runs it.
pub fn run(a: ExperimentArgs) -> Result<(), CliError> {
    if !(1..=20).contains(&a.repeat) {
        return Err(CliError::Repeat(a.repeat));
    }
    let opts = Options {
        out: a
            .out
            .unwrap_or_else(|| PathBuf::from("memout-results").join(&a.name)),
        quick: a.quick,
        repeat: a.repeat,
        force: a.force,
        guests: dedup(a.guests),
        scratch_dir: a.scratch_dir,
        redis: a.redis,
        progress: std::io::stderr().is_terminal(),
        ksm_guard: Some(std::env::current_exe().map_err(CliError::Exe)?),
    };
    let files = match a.name.as_str() {
        "ksm" => {
            if opts.guests.contains(&GuestKind::Memout) && !memout_vmm::vm::kvm_available() {
                return Err(CliError::NoKvm);
            }
            experiment::ksm_report::run(&opts)?
        }
        "swap-pressure" => {
            if !memout_vmm::vm::kvm_available() {
                return Err(CliError::NoKvm);
            }
            experiment::swap_report::run(&opts)?
        }
        "interference" => {
            if !memout_vmm::vm::kvm_available() {
                return Err(CliError::NoKvm);
            }
            experiment::interference::run(&opts)?
        }
        other => return Err(CliError::UnknownExperiment(other.to_string())),
    };
    println!("{} results in {}:", a.name, opts.out.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// The kinds in the order given, each once.
fn dedup(kinds: Vec<GuestKind>) -> Vec<GuestKind> {
    let mut out = Vec::new();
    for k in kinds {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}
