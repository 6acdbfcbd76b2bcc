//! `memout qemu`: serve one Linux guest under QEMU (memout.ko over ivshmem-doorbell), listed
//! on the control socket so `memoutctl list/status/resize` reach it.

use memout_server::control::ControlConfig;
use memout_vmm::cli_size;
use memout_vmm::qemu::QemuGuestConfig;
use memout_vmm::qemu::run::{Error, serve_until_done};
use std::path::PathBuf;

/// The command's options.
#[derive(clap::Args)]
pub struct QemuArgs {
    /// The guest's name (what memoutctl calls it).
    #[arg(long, default_value = "linux")]
    name: String,
    /// Guest RAM (at most 2G).
    #[arg(long, default_value = "1G", value_parser = cli_size::parse)]
    ram: u64,
    /// The guest's pinned minimum: no resize may go below it.
    #[arg(long, default_value = "64M", value_parser = cli_size::parse)]
    min: u64,
    /// Where the RAM file goes (tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    ram_dir: PathBuf,
    /// The ivshmem server's socket [default: $TMPDIR/memout-<name>.ivshmem].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Control socket path [default: $MEMOUT_RUNTIME_DIR/memout.sock or
    /// /run/memout/memout.sock].
    #[arg(long)]
    control: Option<PathBuf>,
    /// Offer the exit-free fast path for this many vCPUs (0: none). Only with guest atomics
    /// that are atomic against memout: KVM, or `-accel tcg,thread=multi` with `-smp
    /// ...,maxcpus=` at least 2 (with one possible vCPU TCG emulates them non-atomically).
    #[arg(long, default_value_t = 0)]
    fastpath_cpus: u32,
    /// Serve no control socket.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,
    /// QEMU arguments to start QEMU with (after `--`).
    #[arg(last = true)]
    qemu: Vec<String>,
}

/// Serves until Ctrl-C, SIGTERM, or the QEMU it started exits; prints what the guest gave back.
pub fn run(a: QemuArgs) -> Result<(), Error> {
    let socket = a
        .socket
        .unwrap_or_else(|| std::env::temp_dir().join(format!("memout-{}.ivshmem", a.name)));
    let control = (!a.no_control).then(|| a.control.unwrap_or_else(ControlConfig::default_path));
    let cfg = QemuGuestConfig {
        name: a.name.clone(),
        ram_bytes: a.ram,
        ram_dir: a.ram_dir,
        socket,
        min_bytes: a.min,
        fastpath_cpus: a.fastpath_cpus,
    };
    let name = a.name;
    let s = serve_until_done(&cfg, control.as_deref(), &a.qemu, |args, control| {
        println!(
            "qemu-system-x86_64 {} <kernel, disk and console options>",
            args.join(" ")
        );
        if let Some(c) = control {
            eprintln!("memout: control socket {}", c.display());
        }
        eprintln!("memout: serving {name}; Ctrl-C to stop");
    })?;
    eprintln!(
        "memout: {name}: {} MiB resident, {} MiB reported free, {} MiB given back, {} requests ({} refused)",
        s.resident_pages >> 8,
        s.reported_pages >> 8,
        s.freed_pages >> 8,
        s.requests,
        s.request_errors
    );
    Ok(())
}
