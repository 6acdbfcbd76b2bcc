//! `memoutctl ksm status|on|off|auto` and `memoutctl mergeable NAME on|off`: the server's
//! KSM controller, KSM's figures, and a guest's mergeable setting.

use super::{Cli, Failure, ask, done, unexpected};
use memout_protocol::control::{KsmMode, KsmReport, Request, Response};
use memout_server::control::Client;

/// What `memoutctl ksm` does.
pub(crate) fn parse_action(s: &str) -> Result<Option<KsmMode>, String> {
    match s {
        "status" => Ok(None),
        m => KsmMode::from_name(m)
            .map(Some)
            .ok_or_else(|| format!("unknown KSM action {s:?} (status, on, off, auto)")),
    }
}

/// `memoutctl ksm ACTION`.
pub(crate) fn ksm(cli: &Cli, c: &mut Client, set: Option<KsmMode>) -> Result<(), Failure> {
    match ask(c, &Request::Ksm { set })? {
        Response::Ksm(r) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_value(&*r).expect("plain data serializes")
                );
            } else {
                print_report(&r);
            }
            Ok(())
        }
        r => Err(unexpected(r)),
    }
}

/// `memoutctl mergeable NAME on|off`.
pub(crate) fn mergeable(cli: &Cli, c: &mut Client, guest: &str, on: &str) -> Result<(), Failure> {
    let on = match on {
        "on" => true,
        "off" => false,
        s => {
            return Err(Failure::Usage(format!(
                "mergeable takes on or off, not {s:?}"
            )));
        }
    };
    done(
        cli,
        ask(
            c,
            &Request::SetMergeable {
                guest: guest.to_string(),
                on,
            },
        )?,
    )
}

fn print_report(r: &KsmReport) {
    let row = |k: &str, v: String| println!("{k:<22} {v}");
    row("controller", r.mode.name().into());
    if let Some(u) = &r.unavailable {
        row("unavailable", u.clone());
        return;
    }
    let k = &r.knobs;
    row(
        "ksmd",
        format!(
            "{} ({} pages every {} ms)",
            if k.run == 1 { "running" } else { "stopped" },
            k.pages_to_scan,
            k.sleep_millisecs
        ),
    );
    if let Some(s) = &r.saved {
        row(
            "restores on off",
            format!(
                "run {}, {} pages, {} ms",
                s.run, s.pages_to_scan, s.sleep_millisecs
            ),
        );
    }
    row("pages shared", r.pages_shared.to_string());
    row(
        "pages sharing",
        format!(
            "{} ({:.1} MiB saved)",
            r.pages_sharing,
            r.pages_sharing as f64 / 256.0
        ),
    );
    row("pages unshared", r.pages_unshared.to_string());
    row("pages volatile", r.pages_volatile.to_string());
    row("full scans", r.full_scans.to_string());
    if let Some(p) = r.general_profit {
        row("general profit", format!("{:.1} MiB", p as f64 / 1048576.0));
    }
    if let Some(p) = r.process_merging_pages {
        row("server process merged", format!("{p} pages"));
    }
    if let Some(e) = &r.last_error {
        row("auto's last error", e.clone());
    }
    println!("{:<16} {:<10} {:>14}", "GUEST", "MERGEABLE", "MERGED PAGES");
    for g in &r.guests {
        println!(
            "{:<16} {:<10} {:>14}",
            g.name,
            if g.mergeable { "yes" } else { "no" },
            g.merged_pages.map_or("-".into(), |p| p.to_string())
        );
    }
}
