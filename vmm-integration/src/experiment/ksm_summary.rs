//! The KSM experiment's Markdown summary: one table per focus and guest kind, the segment
//! panel, and the findings set against seed 000's, each saying which guests it comes from.

use super::ksm_report::{Medians, counts};
use super::{GuestKind, Options};
use std::fmt::Write as _;

const FOCUSES: [(&str, &str); 4] = [
    ("start", "(1) guests that only start"),
    ("primes", "(2) guests searching primes"),
    (
        "fill-identical",
        "(3a) guests filling anonymous memory with identical data",
    ),
    (
        "fill-random",
        "(3b) guests filling anonymous memory with random data",
    ),
];

fn intro(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::Memout => {
            "memout's KVM guests. Each loads the same block (its image, 16 MiB full / 8 MiB quick) and idles, searches primes, or fills its working set. Host memory for the guests = their resident memory − what KSM saved (`pages_sharing` since the run began). \"KSM on\": ksmd runs at 1250 pages / 20 ms and the guests are made mergeable once they hold their data (with KSM's smart scan, guests mergeable from the start while they write can leave twin pages out of step for many scans); \"off\": not mergeable."
        }
        GuestKind::Linux => {
            "Linux guests under QEMU (software emulation, 256 MiB each, Debian's cloud kernel and memout's busybox initramfs): the paper's setting. Their RAM is QEMU's own anonymous memory, which memout does not serve. \"KSM on\": `-machine mem-merge=on` and ksmd at 1250 pages / 20 ms from before the guests boot (convergence is timed from when every guest is up); \"off\": `mem-merge=off`. Resident is the RSS of the guests' RAM mappings (the guest kernel, its page cache, its free memory that a huge page brought in, and the test's data); the start and prime focuses hold no extra data. Faults are not counted (memout does not serve these guests)."
        }
    }
}

fn focus_table(s: &mut String, kind: GuestKind, ns: &[usize], med: &Medians) {
    for (f, what) in FOCUSES {
        let _ = writeln!(
            s,
            "### {what}\n\n| guests | resident MiB | host MiB, KSM off | host MiB, KSM on | saved MiB | ideal saving of the data MiB | converged after s | faults off / on | primes/s per guest off / on |\n|---|---|---|---|---|---|---|---|---|"
        );
        for &n in ns {
            let (off, on) = (med.get(kind, f, n, false), med.get(kind, f, n, true));
            let ideal = if f == "fill-random" {
                0
            } else {
                (n as u64 - 1) * on.set_mib
            };
            let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
            let rate = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
            let _ = writeln!(
                s,
                "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {ideal} | {}{:.1} | {} / {} | {} / {} |",
                on.resident_mib,
                off.host_mib,
                on.host_mib,
                on.saved_mib,
                if on.converged { "" } else { "not within " },
                on.converge_s,
                opt(off.faults),
                opt(on.faults),
                rate(off.primes_per_s),
                rate(on.primes_per_s),
            );
        }
        s.push('\n');
    }
}

fn segment_table(s: &mut String, ns: &[usize], med: &Medians) {
    let _ = writeln!(
        s,
        "### (4) the same object through a shared segment (not in the paper)\n\n| guests | host MiB, KSM on (identical fill) | host MiB, segment | time to merge s | time to share s |\n|---|---|---|---|---|"
    );
    for &n in ns {
        let k = med.get(GuestKind::Memout, "fill-identical", n, true);
        let g = med.get(GuestKind::Memout, "segment", n, false);
        let _ = writeln!(
            s,
            "| {n} | {:.1} | {:.1} | {:.2} | {:.4} |",
            k.host_mib, g.host_mib, k.converge_s, g.converge_s
        );
    }
    s.push_str("\nTime to merge counts from the guests holding their data (and becoming mergeable) until KSM converged; time to share from registering the segment until every guest mapped it. A segment's host memory is its one copy plus the guests' own (untouched) memory.\n\n");
}

/// The findings of one guest kind against seed 000's.
fn findings(s: &mut String, kind: GuestKind, ns: &[usize], med: &Medians) {
    let last = *ns.last().expect("at least one guest count");
    let saved = |f: &str| {
        ns.iter()
            .map(|&n| med.get(kind, f, n, true).saved_mib)
            .collect::<Vec<_>>()
    };
    let list = |v: &[f64]| {
        let grows = v.windows(2).all(|w| w[1] >= w[0]);
        v.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
            + if grows {
                " MiB (grows)"
            } else {
                " MiB (does not grow at every step)"
            }
    };
    let counts = ns
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let (ident, random) = (
        med.get(kind, "fill-identical", last, true),
        med.get(kind, "fill-random", last, true),
    );
    let (poff, pon) = (
        med.get(kind, "primes", last, false)
            .primes_per_s
            .unwrap_or(0.0),
        med.get(kind, "primes", last, true)
            .primes_per_s
            .unwrap_or(0.0),
    );
    let change = if poff > 0.0 {
        (pon / poff - 1.0) * 100.0
    } else {
        0.0
    };
    let who = match kind {
        GuestKind::Memout => "memout's KVM guests",
        GuestKind::Linux => "Linux guests under QEMU",
    };
    let _ = writeln!(
        s,
        "### Against seed 000's findings ({who})\n\n\
         - *Merged memory grows with the number of identical guests*: saved by guest count {counts}: guests that only start {}; identical fills {}.\n\
         - *Random data merges less than identical data*: with {last} guests, identical fills saved {:.1} MiB, random ones {:.1} MiB.",
        list(&saved("start")),
        list(&saved("fill-identical")),
        ident.saved_mib,
        random.saved_mib,
    );
    if kind == GuestKind::Memout {
        s.push_str("- *Page faults are unchanged by merging*: the faults memout served are in the tables (off / on); KSM merges after the data is written, so the guests' population faults do not change.\n");
    }
    let _ = writeln!(
        s,
        "- Prime search with {last} guests: {poff:.0} primes/s per guest with KSM off, {pon:.0} with it on ({change:+.1} %); ksmd scans on the same CPUs as the guests{}.\n",
        match kind {
            GuestKind::Memout => "",
            GuestKind::Linux =>
                " (under emulation the rate varies by tens of percent from run to run)",
        }
    );
}

/// The summary of a run.
pub fn summary(opts: &Options, med: &Medians) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# KSM experiment (seed 000)\n\n{} run, medians of {} repetition(s). Guests: {}.\n",
        if opts.quick {
            "Quick (CI-sized)"
        } else {
            "Full"
        },
        opts.repeat,
        opts.guests
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for &kind in &opts.guests {
        let ns = counts(kind, opts.quick);
        let _ = writeln!(s, "## Guests: {kind}\n\n{}\n", intro(kind));
        focus_table(&mut s, kind, &ns, med);
        if kind == GuestKind::Memout {
            segment_table(&mut s, &ns, med);
        }
        findings(&mut s, kind, &ns, med);
    }
    if !opts.guests.contains(&GuestKind::Linux) {
        s.push_str("Not measured in this run: Linux guests under QEMU (`--guests linux`).\n");
    }
    s
}
