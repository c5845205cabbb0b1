//! A read connection that maps no more of its desktop than [`crate::mmap_budget`] granted it,
//! and counts itself among its volume's SQLite connections while it lives.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd_db::Reader;

use crate::mmap_budget::{self, MmapBudget, MmapGrant};

/// How often a connection looks whether its desktop grew (a `stat(2)` after a write).
const GROWTH_CHECK: Duration = Duration::from_secs(1);

/// A [`Reader`] with its share of the mapping budget.
pub struct MappedReader {
    reader: Reader,
    grant: MmapGrant,
    /// The mapping limit set on the connection (the grant, unless it grew inside a snapshot).
    applied: u64,
    path: PathBuf,
    last_growth_check: Instant,
    _counted: Counted,
}

/// One count in a volume's count of SQLite connections, while it lives.
struct Counted(Arc<AtomicU32>);

impl Counted {
    fn new(count: &Arc<AtomicU32>) -> Counted {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MappedReader {
    /// Open `path` (immutable or not), mapping what `budget` grants towards its size; counted
    /// in `count` until dropped.
    pub fn open(
        path: &Path,
        immutable: bool,
        budget: &'static MmapBudget,
        count: &Arc<AtomicU32>,
    ) -> deskd_db::Result<MappedReader> {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let grant = budget.grant(mmap_budget::wanted_for(len));
        let reader = Reader::open_mapped(path, immutable, grant.bytes())?;
        Ok(MappedReader {
            reader,
            applied: grant.bytes(),
            grant,
            path: path.to_path_buf(),
            last_growth_check: Instant::now(),
            _counted: Counted::new(count),
        })
    }

    /// Between snapshots: after a write (`wrote`) look, at most once a second, whether the
    /// desktop grew past the grant; a short grant takes what the budget has free again.
    pub fn refresh(&mut self, wrote: bool) {
        if wrote && self.last_growth_check.elapsed() >= GROWTH_CHECK {
            self.last_growth_check = Instant::now();
            if let Ok(meta) = std::fs::metadata(&self.path) {
                self.grant.want(mmap_budget::wanted_for(meta.len()));
            }
        }
        if self.grant.is_short() {
            self.grant.grow();
        }
        // SQLite takes a new limit only between snapshots: until then the connection maps
        // less than granted, which keeps within the budget anyway.
        if self.applied != self.grant.bytes()
            && matches!(self.reader.set_mmap_size(self.grant.bytes()), Ok(true))
        {
            self.applied = self.grant.bytes();
        }
    }
}

impl Deref for MappedReader {
    type Target = Reader;

    fn deref(&self) -> &Reader {
        &self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskd_db::Read;

    #[test]
    fn a_short_reader_takes_what_is_free_between_snapshots_and_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (_writer, _) = deskd_db::Desktop::open(&path, deskd_db::Durability::Normal).unwrap();
        let budget: &'static MmapBudget = Box::leak(Box::new(MmapBudget::new(0)));
        let count = Arc::default();
        let mut reader = MappedReader::open(&path, false, budget, &count).unwrap();
        assert_eq!((reader.applied, count.load(Ordering::SeqCst)), (0, 1));
        assert_eq!(reader.stats().unwrap().objects, 1, "read with pread");
        budget.set_total(1 << 20);
        // Inside a snapshot the grant grows but SQLite keeps the old limit.
        reader.begin_snapshot().unwrap();
        reader.stats().unwrap();
        reader.refresh(false);
        assert!(reader.grant.bytes() > 0);
        assert_eq!(reader.applied, 0);
        reader.end_snapshot().unwrap();
        reader.refresh(false);
        assert_eq!(reader.applied, reader.grant.bytes());
        assert_eq!(
            reader.stats().unwrap().objects,
            1,
            "read through the mapping"
        );
        drop(reader);
        assert_eq!((budget.granted(), count.load(Ordering::SeqCst)), (0, 0));
    }
}
