//! The server's memory figures as `deskd status` prints them (docs/PERFORMANCE.md, "Memory").

use deskd_proto::{ServerMemory, VolumeId, VolumeMemory};

/// The figures of volume `vol`, if the server sent them.
fn of_volume(m: &ServerMemory, vol: VolumeId) -> Option<&VolumeMemory> {
    m.volumes.iter().find(|v| v.vol == vol)
}

/// The `memory` object of a volume's JSON line (null when the server sent none for it).
pub fn volume_json(m: Option<&ServerMemory>, vol: VolumeId) -> serde_json::Value {
    match m.and_then(|m| of_volume(m, vol)) {
        None => serde_json::Value::Null,
        Some(v) => serde_json::json!({
            // Null when withheld (not the volume's admin: docs/security.md).
            "desktop_bytes": deskd_proto::shown(v.desktop_bytes),
            "mappings": v.mappings,
            "mapped_bytes": deskd_proto::shown(v.mapped),
            "mapped_resident_bytes": deskd_proto::shown(v.mapped_resident),
            "sqlite_connections": v.connections,
            "name_index_bytes": deskd_proto::shown(v.name_index),
            "page_cache_limit_bytes": v.page_cache_limit,
        }),
    }
}

/// The `server_memory` object every JSON line carries (null from a server that predates it).
pub fn server_json(m: Option<&ServerMemory>) -> serde_json::Value {
    match m {
        None => serde_json::Value::Null,
        Some(m) => serde_json::json!({
            // Null when withheld (not the server's admin: docs/security.md).
            "rss_anon_bytes": deskd_proto::shown(m.rss_anon),
            "rss_file_bytes": deskd_proto::shown(m.rss_file),
            "vm_hwm_bytes": deskd_proto::shown(m.vm_hwm),
            "sqlite_connections": m.sqlite_connections,
            "mapped_bytes": deskd_proto::shown(m.mapped),
            "mapped_resident_bytes": deskd_proto::shown(m.mapped_resident),
            "mmap_total_bytes": m.mmap_total,
            "mmap_granted_bytes": deskd_proto::shown(m.mmap_granted),
            "short_readers": m.short_readers,
            "gather_millis": m.gather_millis,
        }),
    }
}

/// `12.3 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `12.3 MiB`, or `—` for a figure the server withheld.
fn mib_shown(bytes: u64) -> String {
    deskd_proto::shown(bytes).map_or("—".to_owned(), mib)
}

/// The `memory:` line of a volume in the text output. A desktop in PostgreSQL has no file
/// here to map nor SQLite connections: its line gives the name index alone (it spoke of
/// mappings and page caches of a 0-byte desktop).
pub fn volume_line(m: Option<&ServerMemory>, vol: VolumeId, in_database: bool) -> Option<String> {
    let v = m.and_then(|m| of_volume(m, vol))?;
    if in_database {
        return Some(format!(
            "  memory:       name index {} (the desktop is in the database: nothing mapped here)",
            mib_shown(v.name_index),
        ));
    }
    Some(format!(
        "  memory:       {} mapped ({} resident) in {} mapping(s) of a {} desktop; \
         name index {}; page caches up to {} ({} SQLite connection(s))",
        mib_shown(v.mapped),
        mib_shown(v.mapped_resident),
        v.mappings,
        mib_shown(v.desktop_bytes),
        mib_shown(v.name_index),
        mib(v.page_cache_limit),
        v.connections,
    ))
}

/// The server's lines after the volumes in the text output.
pub fn server_lines(m: &ServerMemory) -> Vec<String> {
    let header = if deskd_proto::shown(m.rss_anon).is_none() {
        // Withheld: they move with every volume's desktop (docs/security.md).
        "server memory (the resident, peak and mapped figures are shown only to root and \
         deskd's user: —)"
    } else {
        "server memory"
    };
    vec![
        header.to_owned(),
        format!(
            "  anonymous:    {} (RssAnon: what deskd itself uses)",
            mib_shown(m.rss_anon)
        ),
        format!(
            "  file pages:   {} (RssFile: the program's files and the desktop mappings, each mapping counted again)",
            mib_shown(m.rss_file)
        ),
        format!("  peak:         {} (VmHWM)", mib_shown(m.vm_hwm)),
        format!(
            "  desktops:     {} mapped, {} resident, {} SQLite connection(s)",
            mib_shown(m.mapped),
            mib_shown(m.mapped_resident),
            m.sqlite_connections
        ),
        format!(
            "  mmap_total:   {} granted of {}{}",
            mib_shown(m.mmap_granted),
            mib(m.mmap_total),
            match m.short_readers {
                0 => String::new(),
                n => format!("; {n} read connection(s) read part of a desktop with pread"),
            }
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_without_figures_is_null_and_has_no_line() {
        let m = ServerMemory::default();
        assert!(volume_json(Some(&m), 3).is_null());
        assert!(volume_json(None, 0).is_null());
        assert!(server_json(None).is_null());
        assert_eq!(volume_line(Some(&m), 3, false), None);
    }

    #[test]
    fn the_text_says_what_each_figure_is() {
        let m = ServerMemory {
            rss_anon: 146 << 20,
            rss_file: 572 << 20,
            short_readers: 2,
            volumes: vec![VolumeMemory {
                vol: 0,
                mapped: 144 << 20,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = server_lines(&m).join("\n");
        assert!(text.contains("146.0 MiB (RssAnon"), "{text}");
        assert!(text.contains("2 read connection(s) read part"), "{text}");
        let line = volume_line(Some(&m), 0, false).unwrap();
        let in_db = volume_line(Some(&m), 0, true).unwrap();
        assert!(
            in_db.contains("name index")
                && !in_db.contains("mapped (")
                && !in_db.contains("SQLite"),
            "{in_db}"
        );
        assert!(line.contains("144.0 MiB mapped"), "{line}");
        assert_eq!(server_json(Some(&m))["rss_file_bytes"], 572u64 << 20);
    }
}
