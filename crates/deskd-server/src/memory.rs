//! The server's memory figures ([`ServerMemory`], `deskd status`): the kernel's counts from
//! `/proc/self/status`, the desktop mappings from `/proc/self/smaps`, and what deskd knows of
//! its own structures (name indexes, page cache limits, the mapping budget).
//!
//! Reading smaps walks every mapping of the process (the kernel takes the mapping lock for
//! reading, which does not stop page faults, only new mappings for that moment), so the
//! figures are gathered at most once a second, on the asking connection's thread, never the
//! writer's; askers in the same second share them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd_proto::{ServerMemory, VolumeMemory};

use crate::mmap_budget;
use crate::volume::VolumeHandle;

/// How long gathered figures are served again.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The figures for `volumes`, gathered now or less than a second ago.
pub fn figures(volumes: &[Arc<VolumeHandle>]) -> ServerMemory {
    static LAST: Mutex<Option<(Instant, ServerMemory)>> = Mutex::new(None);
    // Held while gathering: a second asker waits and gets the same figures.
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((when, figures)) = last.as_ref() {
        if when.elapsed() < FRESH_FOR {
            return figures.clone();
        }
    }
    let figures = gather(volumes);
    *last = Some((Instant::now(), figures.clone()));
    figures
}

/// Gather the figures now.
fn gather(volumes: &[Arc<VolumeHandle>]) -> ServerMemory {
    let began = Instant::now();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kernel = KernelCounts::parse(&status);
    // Each volume's desktop, as the writer maps it and as readers do (a copy when reads are
    // served from one).
    let files: Vec<Vec<MappedFile>> = volumes
        .iter()
        .map(|h| {
            // A desktop in PostgreSQL maps nothing here (its `desktop_path` is no file).
            if h.pg.is_some() {
                return Vec::new();
            }
            let mut files: Vec<MappedFile> = MappedFile::of(&h.desktop_path).into_iter().collect();
            if let Some(reads) = MappedFile::of(h.reads_path()) {
                if !files.contains(&reads) {
                    files.push(reads);
                }
            }
            files
        })
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mapped = mapping_totals(&smaps, &files);
    let budget = mmap_budget::global();
    let mut out = ServerMemory {
        rss_anon: kernel.rss_anon,
        rss_file: kernel.rss_file,
        vm_hwm: kernel.vm_hwm,
        mmap_total: budget.total(),
        mmap_granted: budget.granted(),
        short_readers: budget.short(),
        sqlite_connections: budget.grants(),
        ..Default::default()
    };
    for (handle, totals) in volumes.iter().zip(mapped) {
        let writer = u32::from(handle.writer_connected);
        let readers = handle.read_connections.load(Ordering::Relaxed);
        out.sqlite_connections += writer;
        out.mapped += totals.size;
        out.mapped_resident += totals.resident;
        out.volumes.push(VolumeMemory {
            vol: handle.index,
            desktop_bytes: std::fs::metadata(handle.reads_path())
                .map(|m| m.len())
                .unwrap_or(0),
            mappings: totals.mappings,
            mapped: totals.size,
            mapped_resident: totals.resident,
            connections: writer + readers,
            name_index: name_index_bytes(handle),
            page_cache_limit: u64::from(writer) * deskd_db::WRITER_CACHE_BYTES
                + u64::from(readers) * deskd_db::READER_CACHE_BYTES,
        });
    }
    out.gather_millis = began.elapsed().as_millis().min(u32::MAX as u128) as u32;
    out
}

/// The heap of `handle`'s name index, rounded up to a MiB (a figure for sizing memory, not
/// for counting names). Given to the volume's admins only, as the object count is: it moves
/// with every name added anywhere on the volume, and a user could step even the rounded
/// figure with names of its own ([`crate::withheld`]).
pub(crate) fn name_index_bytes(handle: &VolumeHandle) -> u64 {
    const GRAIN: u64 = 1 << 20;
    handle.names.heap_bytes().div_ceil(GRAIN) * GRAIN
}

/// The process-wide counts of `/proc/self/status` now: cheap (no walk of the mappings), so
/// every metrics scrape reads them afresh.
pub(crate) fn kernel_counts() -> KernelCounts {
    KernelCounts::parse(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// The process-wide counts of `/proc/self/status`, in bytes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct KernelCounts {
    pub(crate) rss_anon: u64,
    pub(crate) rss_file: u64,
    pub(crate) vm_hwm: u64,
}

impl KernelCounts {
    fn parse(status: &str) -> KernelCounts {
        let mut counts = KernelCounts::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let slot = match key {
                "RssAnon" => &mut counts.rss_anon,
                "RssFile" => &mut counts.rss_file,
                "VmHWM" => &mut counts.vm_hwm,
                _ => continue,
            };
            *slot = kib(value);
        }
        counts
    }
}

/// `"   1234 kB"` in bytes (0 when unreadable).
fn kib(value: &str) -> u64 {
    value
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        .saturating_mul(1024)
}

/// A file as smaps names it: device numbers and inode, and its path for file systems whose
/// `stat(2)` device differs from the one the mapping shows (btrfs subvolumes).
#[derive(Debug, Clone, PartialEq)]
struct MappedFile {
    major: u64,
    minor: u64,
    ino: u64,
    path: Option<String>,
}

impl MappedFile {
    fn of(path: &Path) -> Option<MappedFile> {
        let meta = std::fs::metadata(path).ok()?;
        Some(MappedFile {
            major: nix::sys::stat::major(meta.dev()),
            minor: nix::sys::stat::minor(meta.dev()),
            ino: meta.ino(),
            path: std::fs::canonicalize(path)
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned)),
        })
    }

    /// Whether the smaps header `dev inode path` names this file.
    fn is(&self, dev: &str, ino: u64, path: &str) -> bool {
        if ino != self.ino {
            return false;
        }
        let same_dev = dev.split_once(':').is_some_and(|(major, minor)| {
            u64::from_str_radix(major, 16) == Ok(self.major)
                && u64::from_str_radix(minor, 16) == Ok(self.minor)
        });
        same_dev || self.path.as_deref() == Some(path)
    }
}

/// The mappings of one volume's desktop files together.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct MappingTotals {
    mappings: u32,
    size: u64,
    resident: u64,
}

/// For each entry of `volumes` (its desktop files), the totals of the smaps mappings of those
/// files.
fn mapping_totals(smaps: &str, volumes: &[Vec<MappedFile>]) -> Vec<MappingTotals> {
    let mut totals = vec![MappingTotals::default(); volumes.len()];
    let mut current: Option<usize> = None;
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            let (dev, ino, path) = header;
            current = volumes
                .iter()
                .position(|files| files.iter().any(|f| f.is(dev, ino, path)));
            if let Some(v) = current {
                totals[v].mappings += 1;
            }
            continue;
        }
        let Some(v) = current else { continue };
        if let Some(value) = line.strip_prefix("Size:") {
            totals[v].size += kib(value);
        } else if let Some(value) = line.strip_prefix("Rss:") {
            totals[v].resident += kib(value);
        }
    }
    totals
}

/// `start-end perms offset dev inode path` → `(dev, inode, path)`; None for other lines.
fn mapping_header(line: &str) -> Option<(&str, u64, &str)> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    if start.is_empty()
        || !start
            .bytes()
            .chain(end.bytes())
            .all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let _perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let ino = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some((dev, ino, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_counts_are_read_in_bytes() {
        let status =
            "Name:\tdeskd\nVmHWM:\t  718000 kB\nVmRSS:\t  5000 kB\nRssAnon:\t  146000 kB\n\
                      RssFile:\t    4000 kB\nRssShmem:\t 0 kB\n";
        assert_eq!(
            KernelCounts::parse(status),
            KernelCounts {
                rss_anon: 146000 * 1024,
                rss_file: 4000 * 1024,
                vm_hwm: 718000 * 1024,
            }
        );
        assert_eq!(
            KernelCounts::parse("garbage\nVmHWM: x kB"),
            KernelCounts::default()
        );
    }

    #[test]
    fn only_the_desktops_mappings_are_summed_per_volume() {
        let desktop = MappedFile {
            major: 0xfd,
            minor: 1,
            ino: 42,
            path: Some("/srv/a/.Desktop".into()),
        };
        let smaps = "\
7f0000000000-7f0000100000 r--s 00000000 fd:01 42                         /srv/a/.Desktop
Size:               1024 kB
Rss:                 512 kB
7f0000200000-7f0000300000 r--s 00000000 fd:01 42                         /srv/a/.Desktop
Size:               1024 kB
Rss:                1000 kB
7f0000400000-7f0000500000 r--p 00000000 fd:01 43                         /usr/lib/libc.so
Size:               1024 kB
Rss:                1024 kB
7f0000600000-7f0000700000 rw-p 00000000 00:00 0 
Size:                  8 kB
Rss:                   4 kB
";
        let totals = mapping_totals(smaps, &[vec![desktop.clone()], vec![]]);
        assert_eq!(
            totals[0],
            MappingTotals {
                mappings: 2,
                size: 2048 * 1024,
                resident: 1512 * 1024,
            }
        );
        assert_eq!(totals[1], MappingTotals::default());
        // Another device number (a btrfs subvolume) but the same path and inode: the same file.
        let elsewhere = MappedFile {
            major: 0,
            minor: 0x2a,
            ..desktop
        };
        assert_eq!(mapping_totals(smaps, &[vec![elsewhere]])[0].mappings, 2);
    }

    #[test]
    fn the_processs_own_figures_are_plausible() {
        let figures = gather(&[]);
        assert!(figures.rss_anon > 0 && figures.vm_hwm >= figures.rss_anon);
        assert_eq!(figures.mmap_total, mmap_budget::global().total());
    }
}
