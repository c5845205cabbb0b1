//! Times as the server's messages give them: local, in `ctime(3)`'s layout, as HELIOS's
//! `missing DB shutdown` line (`Thu Nov 24 18:22:48 2009`).

/// `ctime(3)`'s layout, without its newline.
pub(crate) const CTIME_FORMAT: &str = "%a %b %e %H:%M:%S %Y";

/// Unix time `unix` in the server's local time, `ctime(3)`'s layout; the number itself when it
/// is out of range.
pub(crate) fn ctime(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format(CTIME_FORMAT)
                .to_string()
        })
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}
