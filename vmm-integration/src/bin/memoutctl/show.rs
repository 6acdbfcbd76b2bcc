//! How memoutctl prints a guest's state and a resize for people.

use super::mib;
use memout_protocol::control::{GuestStatus, ResizeProgress};

pub(crate) fn print_status(g: &GuestStatus) {
    let row = |k: &str, v: String| println!("{k:<18} {v}");
    row("name", g.name.clone());
    row("vmm", g.vmm.name().into());
    row("state", state(g));
    row("region", mib(g.region_bytes));
    row("requested", mib(g.requested_bytes));
    row("pinned minimum", mib(g.min_bytes));
    row("allocated", mib(g.allocated_bytes));
    row("resident", mib(g.resident_bytes));
    row("evicted", mib(g.evicted_bytes));
    row(
        "budget",
        g.budget_bytes.map(mib).unwrap_or_else(|| "none".into()),
    );
    row("policy", g.policy.clone());
    row("eviction", g.eviction.clone());
    row(
        "KSM mergeable",
        if g.mergeable { "yes" } else { "no" }.into(),
    );
    row("faults", g.faults.to_string());
    row("populated pages", g.populated_pages.to_string());
    row("freed pages", g.freed_pages.to_string());
    row("evicted pages", g.evicted_pages_total.to_string());
    row("swapped-in pages", g.swapped_in_pages.to_string());
    row("evict errors", g.evict_errors.to_string());
    if let Some(e) = &g.last_evict_error {
        row("last evict error", e.clone());
    }
    if let Some(r) = &g.resize {
        row(
            "last resize",
            format!(
                "{} → {} ({})",
                mib(r.from_bytes),
                mib(r.target_bytes),
                r.phase.name()
            ),
        );
    }
}

pub(crate) fn print_resize(p: &ResizeProgress) {
    println!(
        "resize #{}: {} → {}: {}\n  freed at once {}, released by the guest {}, evicted {}, {:.1} ms\n  now: {} allocated, {} resident{}",
        p.id,
        mib(p.from_bytes),
        mib(p.target_bytes),
        p.phase.name(),
        mib(p.freed_bytes),
        mib(p.released_bytes),
        mib(p.evicted_bytes),
        p.elapsed_us as f64 / 1e3,
        mib(p.allocated_bytes),
        mib(p.resident_bytes),
        p.note
            .as_ref()
            .map(|n| format!("\n  note: {n}"))
            .unwrap_or_default()
    );
}

pub(crate) fn state(g: &GuestStatus) -> String {
    if let Some(s) = &g.stopped {
        return format!("stopped: {s}");
    }
    match &g.resize {
        Some(r) if !r.phase.is_final() => format!("resizing ({})", r.phase.name()),
        _ => "running".into(),
    }
}
