//! The Linux module's exit-free fast path: `/dev/memout` mappings of a few pages take frames
//! the host granted ahead into the module's magazine, and their unmaps push the frames on its
//! free stack, so thousands of maps go by without a doorbell; the module's bookkeeping and
//! the host's agree from load to unload.

mod linux_support;

use linux_support::{MIB, expect_lines, guest, image};
use memout_tests::{Piece, require_all};
use memout_vmm::qemu::launch::Qemu;
use std::time::Duration;

/// A number after `key ` on the console line that starts with `prefix`.
fn console_value(console: &str, prefix: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} number\n{console}"))
}

/// What a `devloop` run showed.
struct Run {
    /// Requests the host refused (whole run).
    refused: u64,
    /// Pages mapped after the warm-up.
    pages: u64,
    /// Doorbells the host saw meanwhile.
    doorbells: u64,
    /// Frames the module took from, and gave to, its fast path (whole run).
    allocs: u64,
    frees: u64,
    console: String,
}

/// Boots a 512 MiB guest running `memout-test devloop MAPS PAGES HOLD` and checks what every
/// run must show: data intact, no frame refused on either side, the host's fast path running,
/// and unload leaving the host holding nothing.
fn devloop(name: &str, maps: u64, pages: u64, hold: bool) -> Run {
    let image = image();
    let g = guest(name, 512 * MIB);
    let args = format!("memout_test=devloop,{maps},{pages},{}", hold as u8);
    let mut q = Qemu::boot(&g, &image, &args).expect("starting QEMU");
    q.wait_line("MEMOUT-TEST: devloop warm", Duration::from_secs(240))
        .expect("the guest maps /dev/memout");
    let warm = g.guest().stats();
    let after = maps - maps / 10;
    q.wait_line(
        &format!("MEMOUT-TEST: devloop {after} maps"),
        Duration::from_secs(600),
    )
    .expect("the guest finishes its maps");
    let done = g.guest().stats();
    eprintln!("{name}: after the warm-up {warm:?}\nat the end {done:?}");
    let console = q.finish(Duration::from_secs(300)).join("\n");
    expect_lines(
        &console,
        &[
            "(0 nonzero, 0 bad)",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: fast on 1",
            "MEMOUT-GUEST: fast bad 0",
            "MEMOUT-GUEST: bad_grants 0",
            "MEMOUT-GUEST: dev_bytes 0",
            "MEMOUT-GUEST: unloaded",
        ],
    );
    // Frames freed sat on the free stack until the guest went idle (its 3 s wait): then the
    // host took them in a batch.
    let s = g.guest().stats();
    let fast = s.fastpath.expect("the guest has a fast path");
    assert_eq!((fast.stopped, fast.refused_entries), (None, 0), "{fast:?}");
    assert!(
        fast.granted_pages > 0 && fast.returned_pages > 0,
        "{fast:?}"
    );
    assert_eq!(s.punch_errors, 0, "{s:?}");
    assert_eq!(
        s.allocated_pages, s.ram_pages,
        "unload left the host holding frames: {s:?}"
    );
    let run = Run {
        refused: s.request_errors,
        pages: after * pages,
        doorbells: done.doorbells - warm.doorbells,
        allocs: console_value(&console, "MEMOUT-GUEST: fast allocs"),
        frees: console_value(&console, "MEMOUT-GUEST: fast frees"),
        console,
    };
    eprintln!(
        "{name}: {} pages after warm-up, {} doorbells; module: {} fast allocs, {} fast frees of {} pages; host: {fast:?}",
        run.pages,
        run.doorbells,
        run.allocs,
        run.frees,
        maps * pages
    );
    run
}

/// 2000 maps of 8 pages, each unmapped at once (alloc/free pairs): after the first tenth the
/// host sees no doorbell at all, and the module took at least 90 % of the pages from, and
/// gave them to, its fast path.
#[test]
fn dev_memout_map_unmap_pairs_ring_no_doorbell() {
    if !require_all(&[Piece::Qemu], "linux_fastpath") {
        return;
    }
    let r = devloop("fastpairs", 2000, 8, false);
    assert_eq!(r.doorbells, 0, "{} pages\n{}", r.pages, r.console);
    assert_eq!(r.refused, 0, "{}", r.console);
    assert!(
        r.allocs * 10 >= 2000 * 8 * 9 && r.frees * 10 >= 2000 * 8 * 9,
        "fast path: {} allocs, {} frees of {} pages",
        r.allocs,
        r.frees,
        2000 * 8
    );
}

/// 1000 maps of 8 pages held to the end (the guest's /dev/memout use grows by 31 MiB beyond
/// its quota, so it pays the host as it goes, then unmaps it all): at most two doorbells per
/// 100 pages after the warm-up, most pages through the fast path.
#[test]
fn dev_memout_growth_pays_ahead_in_batches() {
    if !require_all(&[Piece::Qemu], "linux_fastpath") {
        return;
    }
    let r = devloop("fastgrow", 1000, 8, true);
    // Without the fast path every map is two doorbells (pay, then ALLOC): 25 per 100 pages.
    // Here about 1.2 (pay-ahead every 520 pages, the balloon's catch-up as the unmaps free
    // room, and free page reporting), bounded at 2. Refusals are allowed: the balloon and the
    // host's refills race for the same room, and the loser's ALLOC is refused (quota).
    assert!(
        r.doorbells * 50 <= r.pages,
        "{} doorbells for {} pages\n{}",
        r.doorbells,
        r.pages,
        r.console
    );
    assert!(
        r.allocs * 10 >= 1000 * 8 * 9,
        "fast path: {} allocs of {} pages",
        r.allocs,
        1000 * 8
    );
}
