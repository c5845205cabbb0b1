//! What the metrics ([`crate::metrics`]) keep between two scrapes, held in
//! [`crate::shared::Shared`]: when the server started, and one read connection per volume
//! opening for the ID counter (opening one per scrape would cost more than the whole rest of a
//! scrape). No module of this crate is used here.

use std::collections::HashMap;
use std::sync::Mutex;

use deskd_db::{now_unix, Reader};

/// The metrics' state between scrapes.
pub(crate) struct ScrapeCache {
    /// Unix time the server started.
    pub(crate) started: i64,
    /// Per volume handle: the opening a reader belongs to, and the reader.
    pub(crate) readers: Mutex<HashMap<u32, (u64, Reader)>>,
}

impl ScrapeCache {
    pub(crate) fn new() -> ScrapeCache {
        ScrapeCache {
            started: now_unix(),
            readers: Mutex::new(HashMap::new()),
        }
    }
}
