//! Seed 000's KSM experiment on real Linux guests, the paper's own setting: plain QEMU guests
//! (software emulation, Debian's cloud kernel and memout's test initramfs) whose RAM is QEMU's
//! private anonymous memory, mergeable with `-machine mem-merge=on`. memout does not serve
//! them: it serves a Linux guest's RAM from a shared file, which KSM cannot merge.
//!
//! Each guest boots and runs `memout-test ksm MIB CONTENT PRIMES` (fill MIB with identical or
//! random data, then count primes or sleep, checking its data every round). "KSM on": the
//! guests' RAM is mergeable and the server's KSM controller runs ksmd (`on`: 1250 pages /
//! 20 ms) from before they boot; once every guest is up, the run waits until KSM converged
//! (as in [`super::ksm`]); "off": `mem-merge=off`. Resident memory is the RSS of the guests' RAM mappings (`smaps`).

use super::ksm::{Focus, Row, converge, focus, settled_counters, used_kib};
use super::{Error, GuestKind, Options, Result};
use crate::qemu::launch::{LinuxImage, Qemu};
use memout_server::Server;
use memout_server::ksm::pages::process_ksm_of;
use memout_server::ksm::{KsmMode, KsmSysfs};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Each guest's RAM.
const RAM_MIB: u64 = 256;
/// Time for the guests to boot and fill their memory (they share 2 CPUs under emulation).
const BOOT: Duration = Duration::from_secs(300);
/// What a guest prints once it holds its data.
const READY: &str = "MEMOUT-TEST: ksm ready";
/// What it prints after each round of work and checking.
const ROUND: &str = "MEMOUT-TEST: ksm round";

/// A round line's figures: (primes found, milliseconds of search, bad words).
fn parse_round(line: &str) -> Option<(u64, f64, u64)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
    Some((
        after("primes")?.parse().ok()?,
        after("ms")?.parse().ok()?,
        after("bad")?.parse().ok()?,
    ))
}

/// The resident KiB of the mapping of exactly `size_kib` in `smaps` text (the guest's RAM).
fn mapping_rss_kib(smaps: &str, size_kib: u64) -> Option<u64> {
    let mut size = None;
    for l in smaps.lines() {
        if let Some(v) = l.strip_prefix("Size:") {
            size = v.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
        } else if let Some(v) = l.strip_prefix("Rss:")
            && size == Some(size_kib)
        {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

/// The guest's kernel command-line addition for a focus.
fn test_args(f: &Focus, mib: u64) -> String {
    format!("memout_test=ksm,{mib},{},{}", f.content, u8::from(f.primes))
}

/// Measures focus `key` with `n` Linux guests, KSM on or off.
pub fn measure(
    opts: &Options,
    image: &LinuxImage,
    key: &str,
    n: usize,
    ksm: bool,
    rep: usize,
) -> Result<Row> {
    let f = focus(key);
    let mib = if f.primes || f.key == "start" {
        0
    } else if opts.quick {
        f.mib.1
    } else {
        f.mib.0
    };
    let k = KsmSysfs::system();
    let server = Server::builder().build()?;
    let base = if ksm {
        server.configure_ksm(super::ksm::controller_config(opts));
        server.ksm().set_mode(KsmMode::On)?;
        settled_counters(&k)?
    } else {
        k.counters()?
    };
    let base_used = used_kib();
    let args = [
        "-m".to_string(),
        format!("{RAM_MIB}M"),
        "-machine".into(),
        format!("pc,mem-merge={}", if ksm { "on" } else { "off" }),
    ];
    let mut guests = Vec::new();
    for _ in 0..n {
        guests.push(Qemu::boot_with(&args, image, &test_args(&f, mib))?);
    }
    for (i, g) in guests.iter_mut().enumerate() {
        g.wait_line(READY, BOOT).map_err(|e| Error::Guest {
            name: format!("linux{i}"),
            outcome: e.to_string(),
        })?;
    }
    let held = Instant::now();
    let bound = Duration::from_secs(if opts.quick { 60 } else { 180 });
    let (converge_s, converged) = if ksm {
        converge(&k, held, bound)?
    } else {
        std::thread::sleep(Duration::from_secs(if opts.quick { 5 } else { 10 }));
        (0.0, true)
    };
    let c = k.counters()?;
    let measured = Instant::now();
    let mut resident_kib = 0;
    let mut merged = 0;
    for (i, g) in guests.iter().enumerate() {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", g.pid())).unwrap_or_default();
        resident_kib += mapping_rss_kib(&smaps, RAM_MIB * 1024).ok_or_else(|| Error::Guest {
            name: format!("linux{i}"),
            outcome: "no guest RAM mapping in QEMU's smaps".into(),
        })?;
        merged += process_ksm_of(g.pid())
            .ok()
            .and_then(|p| p.merging_pages)
            .unwrap_or(0);
    }
    let system_used = used_kib() as f64 - base_used as f64;
    // Every guest checks its data once more after the measurement; the prime rate counts
    // the rounds that ran while the guests were held.
    let (mut primes, mut ms) = (0u64, 0f64);
    for (i, g) in guests.iter_mut().enumerate() {
        loop {
            let (t, line) =
                g.wait_line(ROUND, Duration::from_secs(60))
                    .map_err(|e| Error::Guest {
                        name: format!("linux{i}"),
                        outcome: e.to_string(),
                    })?;
            let Some((p, m, bad)) = parse_round(&line) else {
                continue;
            };
            if bad != 0 {
                return Err(Error::Guest {
                    name: format!("linux{i}"),
                    outcome: format!("{bad} words changed: {line}"),
                });
            }
            if t > held && t <= measured {
                primes += p;
                ms += m;
            }
            if t > measured {
                break;
            }
        }
    }
    drop(guests);
    let saved = c.pages_sharing.saturating_sub(base.pages_sharing) as f64 * 4096.0 / MIB as f64;
    let resident_mib = resident_kib as f64 / 1024.0;
    Ok(Row {
        kind: GuestKind::Linux,
        focus: f.key,
        guests: n,
        ksm,
        rep,
        set_mib: mib,
        resident_mib,
        saved_mib: saved,
        host_mib: resident_mib - saved,
        shared_pages: c.pages_shared as i64 - base.pages_shared as i64,
        merged_guest_pages: merged,
        system_used_mib: system_used / 1024.0,
        faults: None,
        converge_s,
        converged,
        primes_per_s: (f.primes && ms > 0.0).then(|| primes as f64 * 1000.0 / ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_round_line() {
        assert_eq!(
            parse_round("MEMOUT-TEST: ksm round 3 primes 269760 ms 1003.8 bad 0"),
            Some((269760, 1003.8, 0))
        );
        assert_eq!(parse_round("MEMOUT-TEST: ksm round 3 primes x"), None);
    }

    #[test]
    fn finds_the_guest_ram_mapping() {
        let smaps = "7f00-7f10 rw-p 0 0 0\nSize:               4096 kB\nRss:  12 kB\n\
                     7f1e-7f2e rw-p 0 0 0\nSize:             262144 kB\nKernelPageSize: 4 kB\nRss:             241000 kB\n";
        assert_eq!(mapping_rss_kib(smaps, 262144), Some(241000));
        assert_eq!(mapping_rss_kib(smaps, 1024), None);
    }
}
