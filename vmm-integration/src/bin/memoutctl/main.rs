//! `memoutctl`: talks to a memout server's control socket. Lists guests, shows their state,
//! resizes them, sets budgets and policies, evicts; runs the server's KSM controller and sets
//! guests mergeable (`ksm.rs`); registers, lists and removes shared segments (`segment.rs`).
//!
//! Exit codes: 0 done; 2 usage error; 3 cannot reach or talk to the server; 4 the server
//! refused the request; 5 a resize ended without reaching its target.

mod ksm;
mod segment;
mod show;

use show::{print_resize, print_status, state};

use clap::{Parser, Subcommand};
use memout_protocol::control::{
    GuestStatus, Policy, Request, ResizePhase, ResizeProgress, Response,
};
use memout_server::control::{Client, ClientError, ControlConfig};
use memout_vmm::cli_size;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "memoutctl",
    version,
    about = "Inspect and steer a running memout server"
)]
struct Cli {
    /// Control socket [default: $MEMOUT_RUNTIME_DIR/memout.sock or /run/memout/memout.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for a reply (a waited-for resize waits as long as it runs).
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the guests.
    List,
    /// Show one guest's state.
    Status {
        /// Guest name.
        guest: String,
    },
    /// Set a guest's requested size (grow or shrink), e.g. `resize vm1 512M`.
    Resize {
        /// Guest name.
        guest: String,
        /// New size (e.g. 512M, 2G).
        #[arg(value_parser = cli_size::parse)]
        size: u64,
        /// Wait until the resize has ended (with a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// Milliseconds the guest gets to release frames before the server evicts.
        #[arg(long, default_value_t = 500)]
        deadline_ms: u32,
    },
    /// Set a guest's resident budget, or `none` to clear it.
    Budget {
        /// Guest name.
        guest: String,
        /// Budget (e.g. 256M) or `none`.
        size: String,
    },
    /// Evict up to SIZE of a guest's coldest memory now.
    Evict {
        /// Guest name.
        guest: String,
        /// How much (e.g. 64M).
        #[arg(value_parser = cli_size::parse)]
        size: u64,
    },
    /// Set a guest's population policy: per-page, fault-around or eager.
    Policy {
        /// Guest name.
        guest: String,
        /// Policy name.
        #[arg(value_parser = parse_policy)]
        policy: Policy,
    },
    /// The server's KSM controller and KSM's figures: `status`, or switch it `on`, `off`
    /// (the system's own settings back) or `auto` (ksmtuned's policy).
    Ksm {
        /// status, on, off or auto.
        #[arg(default_value = "status")]
        action: String,
    },
    /// Shared segments: add, list, rm.
    #[command(subcommand)]
    Segment(segment::SegmentCmd),
    /// Let KSM merge a guest's memory (`on`), or stop it and unmerge it (`off`).
    Mergeable {
        /// Guest name.
        guest: String,
        /// on or off.
        on: String,
    },
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::from_name(s)
        .ok_or_else(|| format!("unknown policy {s:?} (per-page, fault-around, eager)"))
}

/// How the command failed, and its exit code.
enum Failure {
    Usage(String),
    Connection(String),
    Refused(String),
    Incomplete(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Connection(_) => 3,
            Self::Refused(_) => 4,
            Self::Incomplete(_) => 5,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Handshake(m) => Self::Refused(m),
            other => Self::Connection(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (Failure::Usage(m)
            | Failure::Connection(m)
            | Failure::Refused(m)
            | Failure::Incomplete(m)) = &f;
            eprintln!("memoutctl: {m}");
            ExitCode::from(f.code())
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

/// Sends `req`; an error reply becomes [`Failure::Refused`].
fn ask(c: &mut Client, req: &Request) -> Result<Response, Failure> {
    match c.request(req)? {
        Response::Error { kind, message } => Err(Failure::Refused(format!("{message} ({kind:?})"))),
        r => Ok(r),
    }
}

fn unexpected(r: Response) -> Failure {
    Failure::Connection(format!("unexpected reply {r:?}"))
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let path = cli
        .socket
        .clone()
        .unwrap_or_else(ControlConfig::default_path);
    let mut c = Client::connect(&path, "memoutctl", Duration::from_secs(cli.timeout))?;
    match &cli.cmd {
        Cmd::List => match ask(&mut c, &Request::List)? {
            Response::Guests(gs) if cli.json => {
                println!("{}", json!(gs.iter().map(status_json).collect::<Vec<_>>()));
                Ok(())
            }
            Response::Guests(gs) => {
                println!(
                    "{:<16} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:<13} {:<8} STATE",
                    "NAME",
                    "VMM",
                    "REQUESTED",
                    "ALLOCATED",
                    "RESIDENT",
                    "EVICTED",
                    "BUDGET",
                    "POLICY",
                    "EVICTION"
                );
                for g in &gs {
                    println!(
                        "{:<16} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:<13} {:<8} {}",
                        g.name,
                        g.vmm.name(),
                        mib(g.requested_bytes),
                        mib(g.allocated_bytes),
                        mib(g.resident_bytes),
                        mib(g.evicted_bytes),
                        g.budget_bytes.map(mib).unwrap_or_else(|| "-".into()),
                        g.policy,
                        g.eviction,
                        state(g)
                    );
                }
                Ok(())
            }
            r => Err(unexpected(r)),
        },
        Cmd::Status { guest } => match ask(
            &mut c,
            &Request::Status {
                guest: guest.clone(),
            },
        )? {
            Response::Status(g) => {
                if cli.json {
                    println!("{}", status_json(&g));
                } else {
                    print_status(&g);
                }
                Ok(())
            }
            r => Err(unexpected(r)),
        },
        Cmd::Resize {
            guest,
            size,
            wait,
            deadline_ms,
        } => resize(cli, &mut c, guest, *size, *wait, *deadline_ms),
        Cmd::Budget { guest, size } => {
            let bytes = match size.as_str() {
                "none" => None,
                s => Some(cli_size::parse(s).map_err(Failure::Usage)?),
            };
            done(
                cli,
                ask(
                    &mut c,
                    &Request::SetBudget {
                        guest: guest.clone(),
                        bytes,
                    },
                )?,
            )
        }
        Cmd::Evict { guest, size } => {
            match ask(
                &mut c,
                &Request::Evict {
                    guest: guest.clone(),
                    bytes: *size,
                },
            )? {
                Response::Evicted { bytes } => {
                    if cli.json {
                        println!("{}", json!({ "evicted_bytes": bytes }));
                    } else {
                        println!("evicted {}", mib(bytes));
                    }
                    Ok(())
                }
                r => Err(unexpected(r)),
            }
        }
        Cmd::Ksm { action } => {
            let set = ksm::parse_action(action).map_err(Failure::Usage)?;
            ksm::ksm(cli, &mut c, set)
        }
        Cmd::Mergeable { guest, on } => ksm::mergeable(cli, &mut c, guest, on),
        Cmd::Segment(cmd) => segment::run(cli, &mut c, cmd),
        Cmd::Policy { guest, policy } => done(
            cli,
            ask(
                &mut c,
                &Request::SetPolicy {
                    guest: guest.clone(),
                    policy: *policy,
                },
            )?,
        ),
    }
}

fn done(cli: &Cli, r: Response) -> Result<(), Failure> {
    match r {
        Response::Done => {
            if cli.json {
                println!("{}", json!({ "ok": true }));
            } else {
                println!("ok");
            }
            Ok(())
        }
        r => Err(unexpected(r)),
    }
}

fn resize(
    cli: &Cli,
    c: &mut Client,
    guest: &str,
    bytes: u64,
    wait: bool,
    deadline_ms: u32,
) -> Result<(), Failure> {
    let bar = wait && !cli.json && std::io::stderr().is_terminal();
    let req = Request::Resize {
        guest: guest.to_string(),
        bytes,
        release_deadline_ms: deadline_ms,
        wait: wait && !bar,
    };
    if wait {
        c.set_timeout(None)?;
    }
    let mut p = match ask(c, &req)? {
        Response::Resize(p) => p,
        r => return Err(unexpected(r)),
    };
    if bar && !p.phase.is_final() {
        p = follow(c, guest, p)?;
    }
    if cli.json {
        println!("{}", resize_json(&p));
    } else {
        print_resize(&p);
    }
    match p.phase {
        ResizePhase::Incomplete | ResizePhase::Superseded if wait => {
            Err(Failure::Incomplete(format!(
                "resize {}: {}",
                p.phase.name(),
                p.note.clone().unwrap_or_default()
            )))
        }
        _ => Ok(()),
    }
}

/// Polls a resize to its end, drawing a progress bar of the bytes shed.
fn follow(c: &mut Client, guest: &str, first: ResizeProgress) -> Result<ResizeProgress, Failure> {
    let start = first.resident_bytes.max(first.allocated_bytes);
    let to_shed = start.saturating_sub(first.target_bytes).max(1);
    let pb = indicatif::ProgressBar::new(to_shed);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut p = first;
    while !p.phase.is_final() {
        std::thread::sleep(Duration::from_millis(100));
        p = match ask(
            c,
            &Request::ResizeStatus {
                guest: guest.to_string(),
            },
        )? {
            Response::Resize(q) if q.id >= p.id => q,
            r => return Err(unexpected(r)),
        };
        let now = p
            .resident_bytes
            .max(p.allocated_bytes.min(p.resident_bytes + p.released_bytes));
        pb.set_position(start.saturating_sub(now).min(to_shed));
        pb.set_message(p.phase.name());
    }
    pb.finish_and_clear();
    Ok(p)
}

fn resize_json(p: &ResizeProgress) -> serde_json::Value {
    serde_json::to_value(p).expect("plain data serializes")
}

fn status_json(g: &GuestStatus) -> serde_json::Value {
    serde_json::to_value(g).expect("plain data serializes")
}
