//! How much of a guest's memory KSM merged (its pages whose frame carries `KPF_KSM` in
//! `/proc/kpageflags`, found through `/proc/self/pagemap`; root only), and what the kernel
//! counts for the whole process (`/proc/self/ksm_stat`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `/proc/kpageflags` bit: the frame is a KSM page.
const KPF_KSM: u64 = 1 << 21;
/// pagemap: page present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap: frame number bits.
const PM_PFN: u64 = (1 << 55) - 1;
/// Pagemap entries read at once.
const BATCH: usize = 8192;

/// Pages of `[addr, addr + len)` of this process (page-aligned) that KSM merged.
pub fn ksm_pages(addr: usize, len: usize) -> io::Result<u64> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let flags = File::open("/proc/kpageflags")?;
    let pages = len / 4096;
    let mut pfns = Vec::new();
    let mut buf = vec![0u8; BATCH * 8];
    let mut present = 0u64;
    for first in (0..pages).step_by(BATCH) {
        let n = BATCH.min(pages - first);
        let b = &mut buf[..n * 8];
        pagemap.read_exact_at(b, ((addr / 4096 + first) * 8) as u64)?;
        for e in b.chunks_exact(8) {
            let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            if e & PM_PRESENT != 0 {
                present += 1;
                if e & PM_PFN != 0 {
                    pfns.push(e & PM_PFN);
                }
            }
        }
    }
    if present > 0 && pfns.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "/proc/self/pagemap hides frame numbers: counting KSM pages needs CAP_SYS_ADMIN",
        ));
    }
    pfns.sort_unstable();
    // One read per run of consecutive frames; a frame merged for several pages counts for each.
    let mut merged = 0;
    let mut i = 0;
    while i < pfns.len() {
        let start = pfns[i];
        let mut j = i;
        while j + 1 < pfns.len() && pfns[j + 1] <= pfns[j] + 1 && pfns[j + 1] - start < BATCH as u64
        {
            j += 1;
        }
        let span = (pfns[j] - start + 1) as usize;
        let b = &mut buf[..span * 8];
        flags.read_exact_at(b, start * 8)?;
        for pfn in &pfns[i..=j] {
            let k = (pfn - start) as usize * 8;
            let f = u64::from_le_bytes(b[k..k + 8].try_into().expect("8 bytes"));
            merged += u64::from(f & KPF_KSM != 0);
        }
        i = j + 1;
    }
    Ok(merged)
}

/// What `/proc/self/ksm_stat` says (Linux ≥ 6.1; fields a kernel lacks are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessKsm {
    /// Pages of this process KSM merged (`ksm_merging_pages`).
    pub merging_pages: Option<u64>,
    /// KSM's reverse-map items for this process (`ksm_rmap_items`).
    pub rmap_items: Option<u64>,
    /// Bytes saved minus metadata, for this process (`ksm_process_profit`).
    pub profit: Option<i64>,
}

/// Parses `ksm_stat` text.
pub fn parse_ksm_stat(text: &str) -> ProcessKsm {
    fn get<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    }
    ProcessKsm {
        merging_pages: get(text, "ksm_merging_pages"),
        rmap_items: get(text, "ksm_rmap_items"),
        profit: get(text, "ksm_process_profit"),
    }
}

/// This process's KSM figures.
pub fn process_ksm() -> io::Result<ProcessKsm> {
    std::fs::read_to_string("/proc/self/ksm_stat").map(|t| parse_ksm_stat(&t))
}

/// Another process's KSM figures (e.g. a VMM's that memout does not serve).
pub fn process_ksm_of(pid: u32) -> io::Result<ProcessKsm> {
    std::fs::read_to_string(format!("/proc/{pid}/ksm_stat")).map(|t| parse_ksm_stat(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ksm_stat() {
        let t = "ksm_rmap_items 512\nksm_zero_pages 0\nksm_merging_pages 300\nksm_process_profit -12288\nksm_merge_any: no\n";
        let p = parse_ksm_stat(t);
        assert_eq!(
            (p.merging_pages, p.rmap_items, p.profit),
            (Some(300), Some(512), Some(-12288))
        );
        assert_eq!(parse_ksm_stat("").merging_pages, None);
    }

    #[test]
    fn unmerged_memory_has_no_ksm_pages() {
        let v = vec![7u8; 64 * 4096];
        let addr = v.as_ptr() as usize & !4095;
        assert_eq!(ksm_pages(addr, 32 * 4096).unwrap(), 0);
    }
}
