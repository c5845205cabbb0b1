//! What `deskd status` shows of a PostgreSQL volume's read cache (issue 28): the `read_cache`
//! object of `--json` and one line of plain text, taken from the server's `deskd metrics` text
//! (`deskd_read_cache_*{volume="ROOT"}`), so no new request or reply shape is needed: a server
//! without the cache (or an SQLite volume) has no such samples and status shows nothing.

/// The cache's figures of the volume at `root`: hits, misses, disk mismatches, rows, paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCache {
    pub hits: u64,
    pub misses: u64,
    pub disk_mismatches: u64,
    pub rows: u64,
    pub paths: u64,
}

/// A label value as the exposition writes it (`\`, `"` and line feeds escaped).
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures of the volume at `root` in `metrics` (None: none there).
pub fn of(metrics: Option<&str>, root: &[u8]) -> Option<ReadCache> {
    let metrics = metrics?;
    let label = format!(
        "{{volume=\"{}\"}} ",
        escaped(&String::from_utf8_lossy(root))
    );
    let value = |name: &str| -> Option<u64> {
        let prefix = format!("{name}{label}");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some(ReadCache {
        hits: value("deskd_read_cache_hits_total")?,
        misses: value("deskd_read_cache_misses_total")?,
        disk_mismatches: value("deskd_read_cache_disk_mismatches_total")?,
        rows: value("deskd_read_cache_rows")?,
        paths: value("deskd_read_cache_paths")?,
    })
}

/// The `read_cache` object of `deskd status --json` (null when the volume has none).
pub fn json(metrics: Option<&str>, root: &[u8]) -> serde_json::Value {
    match of(metrics, root) {
        Some(c) => serde_json::json!({
            "hits": c.hits,
            "misses": c.misses,
            "disk_mismatches": c.disk_mismatches,
            "rows": c.rows,
            "paths": c.paths,
        }),
        None => serde_json::Value::Null,
    }
}

/// The plain-text line (None when the volume has no cache).
pub fn line(metrics: Option<&str>, root: &[u8]) -> Option<String> {
    let c = of(metrics, root)?;
    Some(format!(
        "  read cache:   {} resolves from memory, {} from the database ({} refused by the disk \
         check); {} rows, {} folder paths held",
        c.hits, c.misses, c.disk_mismatches, c.rows, c.paths
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volumes_own_samples_are_read() {
        let text = "# TYPE deskd_read_cache_hits_total counter\n\
            deskd_read_cache_hits_total{volume=\"/srv/a\\\"b\"} 7\n\
            deskd_read_cache_hits_total{volume=\"/srv/a\"} 1\n\
            deskd_read_cache_misses_total{volume=\"/srv/a\\\"b\"} 3\n\
            deskd_read_cache_disk_mismatches_total{volume=\"/srv/a\\\"b\"} 1\n\
            deskd_read_cache_rows{volume=\"/srv/a\\\"b\"} 10\n\
            deskd_read_cache_paths{volume=\"/srv/a\\\"b\"} 2\n";
        assert_eq!(
            of(Some(text), b"/srv/a\"b"),
            Some(ReadCache {
                hits: 7,
                misses: 3,
                disk_mismatches: 1,
                rows: 10,
                paths: 2
            })
        );
        assert_eq!(of(Some(text), b"/srv/a"), None);
        assert_eq!(json(None, b"/srv/a"), serde_json::Value::Null);
    }
}
