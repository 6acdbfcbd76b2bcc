//! `memoutctl segment add NAME FILE [--guest G]...`, `segment list`, `segment rm NAME`: the
//! server's shared segments.

use super::{Cli, Failure, ask, done, mib, unexpected};
use memout_protocol::control::{Request, Response};
use memout_server::control::Client;

/// What `memoutctl segment` does.
#[derive(clap::Subcommand)]
pub(crate) enum SegmentCmd {
    /// Register a file's bytes as a read-only segment guests can map.
    Add {
        /// Segment name (1 to 63 of A-Z a-z 0-9 . _ -).
        name: String,
        /// The file (read by the server).
        file: std::path::PathBuf,
        /// A guest that may map it (repeat; none: every guest).
        #[arg(long = "guest")]
        guests: Vec<String>,
    },
    /// List the segments: size, host memory, who maps them.
    List,
    /// Remove a segment (at once, or when its last mapping ends).
    Rm {
        /// Segment name.
        name: String,
    },
}

pub(crate) fn run(cli: &Cli, c: &mut Client, cmd: &SegmentCmd) -> Result<(), Failure> {
    match cmd {
        SegmentCmd::Add { name, file, guests } => {
            let path = std::path::absolute(file)
                .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
            done(
                cli,
                ask(
                    c,
                    &Request::RegisterSegment {
                        name: name.clone(),
                        path: path.to_string_lossy().into_owned(),
                        guests: guests.clone(),
                    },
                )?,
            )
        }
        SegmentCmd::List => match ask(c, &Request::ListSegments)? {
            Response::Segments(list) if cli.json => {
                println!(
                    "{}",
                    serde_json::to_value(&list).expect("plain data serializes")
                );
                Ok(())
            }
            Response::Segments(list) => {
                println!(
                    "{:<20} {:>10} {:>10} {:>9} {:<10} GUESTS",
                    "NAME", "SIZE", "HOST", "MAPPINGS", "ACCESS"
                );
                for s in &list {
                    println!(
                        "{:<20} {:>10} {:>10} {:>9} {:<10} {}{}",
                        s.name,
                        mib(s.bytes),
                        mib(s.host_bytes),
                        s.guests.len(),
                        s.access.as_ref().map_or("all".into(), |a| a.join(",")),
                        s.guests.join(","),
                        if s.removing { " (removing)" } else { "" }
                    );
                }
                Ok(())
            }
            r => Err(unexpected(r)),
        },
        SegmentCmd::Rm { name } => match ask(c, &Request::RemoveSegment { name: name.clone() })? {
            Response::SegmentRemoved { pending_mappings } => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({ "pending_mappings": pending_mappings })
                    );
                } else if pending_mappings == 0 {
                    println!("removed");
                } else {
                    println!("removing: goes when its last {pending_mappings} mapping(s) end");
                }
                Ok(())
            }
            r => Err(unexpected(r)),
        },
    }
}
