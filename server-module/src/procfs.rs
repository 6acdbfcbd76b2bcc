//! What the kernel says about this process's mappings (`/proc/self/smaps`): resident size of a
//! mapping, and whether memory handed to the server is private, anonymous and unlocked.

/// One mapping (VMA) as smaps describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Permissions, e.g. `rw-p` (`p` private, `s` shared).
    pub perms: String,
    /// Backing path or tag (empty for anonymous memory).
    pub path: String,
    /// Resident bytes.
    pub rss: u64,
    /// Bytes swapped out by the kernel.
    pub swap: u64,
    /// `VmFlags` mnemonics (`lo` = locked, `sh` = shared, …).
    pub flags: Vec<String>,
}

/// Parses smaps text.
pub fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = parts.next().unwrap_or("").to_string();
            let path = parts.nth(3).unwrap_or("").to_string();
            out.push(Vma {
                start,
                end,
                perms,
                path,
                rss: 0,
                swap: 0,
                flags: Vec::new(),
            });
        } else if let Some(v) = line.strip_prefix("Rss:")
            && let Some(vma) = out.last_mut()
        {
            vma.rss = bytes_of_kb(v);
        } else if let Some(v) = line.strip_prefix("Swap:")
            && let Some(vma) = out.last_mut()
        {
            vma.swap = bytes_of_kb(v);
        } else if let Some(v) = line.strip_prefix("VmFlags:")
            && let Some(vma) = out.last_mut()
        {
            vma.flags = v.split_whitespace().map(str::to_string).collect();
        }
    }
    out
}

/// `"   123 kB"` → bytes (0 if unreadable).
fn bytes_of_kb(v: &str) -> u64 {
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        * 1024
}

/// The mappings of this process.
pub fn vmas() -> std::io::Result<Vec<Vma>> {
    Ok(parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?))
}

/// Resident bytes of the mapping that starts at `addr`, or `None` if none starts there.
pub fn mapping_rss(addr: usize) -> Option<u64> {
    vmas()
        .ok()?
        .into_iter()
        .find(|v| v.start == addr)
        .map(|v| v.rss)
}

/// Which pages of `[addr, addr + len)` of this process are present in RAM (bit 63 of each
/// entry of `pagemap`, this process's open `/proc/self/pagemap`; a page in swap or in the swap
/// cache is not). Unprivileged.
pub fn pages_present(
    pagemap: &std::fs::File,
    addr: usize,
    len: usize,
) -> std::io::Result<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    let pages = len.div_ceil(4096);
    let mut raw = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut raw, (addr / 4096 * 8) as u64)?;
    Ok(raw
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")) >> 63 == 1)
        .collect())
}

/// The value of `key` (e.g. `MemAvailable`) in the text of `/proc/meminfo`, in KiB; 0 if
/// absent.
pub fn parse_meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This host's `/proc/meminfo`.
pub fn meminfo() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/meminfo")
}

/// Free swap space in bytes across active swap areas, from the text of `/proc/swaps`
/// (`Filename Type Size Used Priority`, sizes in KiB).
pub fn parse_swap_free(text: &str) -> u64 {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size: u64 = f.get(2)?.parse().ok()?;
            let used: u64 = f.get(3)?.parse().ok()?;
            Some(size.saturating_sub(used) * 1024)
        })
        .sum()
}

/// Free swap space on this host now, in bytes (0 if `/proc/swaps` cannot be read).
pub fn swap_free() -> u64 {
    std::fs::read_to_string("/proc/swaps").map_or(0, |t| parse_swap_free(&t))
}

/// Why memory cannot be outsourced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsuitable {
    /// Part of the range is not mapped.
    #[error("{0:#x} is not mapped")]
    Unmapped(usize),
    /// A mapping is locked.
    #[error("mapping at {0:#x} is locked (mlock): memout memory must stay pageable")]
    Locked(usize),
    /// A mapping is shared.
    #[error("mapping at {0:#x} is shared: memout needs private anonymous memory")]
    Shared(usize),
    /// A mapping is backed by a file.
    #[error("mapping at {addr:#x} is backed by {path}: memout needs anonymous memory")]
    FileBacked {
        /// Start of the mapping.
        addr: usize,
        /// The file.
        path: String,
    },
    /// A mapping is not readable and writable.
    #[error("mapping at {0:#x} is not readable and writable")]
    NotWritable(usize),
}

/// Why memory cannot be outsourced, or `None` if `[addr, addr + len)` is wholly covered by
/// private, anonymous, writable, unlocked mappings.
pub fn unsuitable(vmas: &[Vma], addr: usize, len: usize) -> Option<Unsuitable> {
    let end = addr.checked_add(len)?;
    let mut at = addr;
    for v in vmas.iter().filter(|v| v.end > addr && v.start < end) {
        if v.start > at {
            return Some(Unsuitable::Unmapped(at));
        }
        if v.flags.iter().any(|f| f == "lo") {
            return Some(Unsuitable::Locked(v.start));
        }
        if !v.perms.ends_with('p') || v.flags.iter().any(|f| f == "sh") {
            return Some(Unsuitable::Shared(v.start));
        }
        if !v.path.is_empty() && !v.path.starts_with("[anon") {
            return Some(Unsuitable::FileBacked {
                addr: v.start,
                path: v.path.clone(),
            });
        }
        if !v.perms.starts_with("rw") {
            return Some(Unsuitable::NotWritable(v.start));
        }
        at = v.end;
    }
    (at < end).then_some(Unsuitable::Unmapped(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
1000-3000 rw-p 00000000 00:00 0 
Rss:                   8 kB
VmFlags: rd wr mr mw me ac 
3000-4000 rw-p 00000000 00:00 0 
Rss:                   4 kB
VmFlags: rd wr mr mw me lo ac 
4000-5000 rw-s 00000000 00:01 12    /dev/zero (deleted)
Rss:                   0 kB
VmFlags: rd wr sh mr mw me ms 
";

    #[test]
    fn parses_and_judges_mappings() {
        let v = parse_smaps(SMAPS);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].start, v[0].end, v[0].rss), (0x1000, 0x3000, 8192));
        assert_eq!(unsuitable(&v, 0x1000, 0x2000), None);
        assert_eq!(
            unsuitable(&v, 0x2000, 0x2000),
            Some(Unsuitable::Locked(0x3000))
        );
        assert_eq!(
            unsuitable(&v, 0x4000, 0x1000),
            Some(Unsuitable::Shared(0x4000))
        );
        assert_eq!(
            unsuitable(&v, 0x8000, 0x1000),
            Some(Unsuitable::Unmapped(0x8000))
        );
        assert_eq!(
            unsuitable(&v, 0x1000, 0x10000),
            Some(Unsuitable::Locked(0x3000))
        );
    }

    #[test]
    fn reads_meminfo() {
        let t = "MemTotal:       24578380 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo_kib(t, "MemTotal"), 24578380);
        assert_eq!(parse_meminfo_kib(t, "MemAvailable"), 20000000);
        assert_eq!(parse_meminfo_kib(t, "Mem"), 0, "whole keys only");
        assert_eq!(parse_meminfo_kib(t, "SwapTotal"), 0);
    }

    #[test]
    fn sums_free_swap() {
        let t = "Filename\tType\tSize\tUsed\tPriority\n\
                 /swapfile file 1048572 1024 -2\n\
                 /dev/zram0 partition 4096 4096 100\n";
        assert_eq!(parse_swap_free(t), (1048572 - 1024) * 1024);
        assert_eq!(parse_swap_free("Filename Type Size Used Priority\n"), 0);
    }

    #[test]
    fn reads_the_real_file() {
        let v = vmas().unwrap();
        assert!(!v.is_empty());
        assert_eq!(mapping_rss(v[0].start), Some(v[0].rss));
    }
}
