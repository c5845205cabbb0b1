//! The columns of `dt ls -l` as ls(1) prints them (mode string, links, owner, group, size,
//! date), plus the deskd columns (ID, type, creator), aligned as ls aligns them; and the mode
//! strings `dt chmod -v` reports.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// ls(1)'s ten-character mode string: the file type, then `rwx` three times with the
/// set-ID and sticky bits as `s`/`S` and `t`/`T`.
pub fn mode_string(meta: &Metadata) -> String {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        '-'
    };
    format!("{kind}{}", perm_string(meta.mode()))
}

/// The nine permission characters of `mode` (chmod -v's form, `rwsr-x--T`).
pub fn perm_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, on, off) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A size as `ls -h` shows it: powers of 1024, rounded up, one decimal below 10 (`4.0K`,
/// `13K`, `1.2M`), bytes as they are below 1024.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [char; 8] = ['K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut x = bytes as f64;
    let mut unit = 0;
    x /= 1024.0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if x < 10.0 {
        let tenths = (x * 10.0).ceil() / 10.0;
        if tenths < 10.0 {
            return format!("{tenths:.1}{}", UNITS[unit]);
        }
        return format!("10{}", UNITS[unit]);
    }
    let whole = x.ceil();
    if whole >= 1024.0 && unit + 1 < UNITS.len() {
        return format!("1.0{}", UNITS[unit + 1]);
    }
    format!("{whole}{}", UNITS[unit])
}

/// ls(1)'s date column in the C locale: `Dec  6 08:00` for the last six months,
/// `Dec  6  2025` otherwise (and for the future), in local time.
pub fn date_string(mtime: i64, now: i64) -> String {
    use chrono::TimeZone;
    const SIX_MONTHS: i64 = 31_556_952 / 2;
    let Some(t) = chrono::Local.timestamp_opt(mtime, 0).single() else {
        return mtime.to_string();
    };
    if now - SIX_MONTHS < mtime && mtime <= now {
        t.format("%b %e %H:%M").to_string()
    } else {
        t.format("%b %e  %Y").to_string()
    }
}

/// User and group names by number, looked up once each.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The user's name, or the number when it has none.
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name)
            })
            .clone()
    }

    /// The group's name, or the number when it has none.
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map_or_else(|| gid.to_string(), |g| g.name)
            })
            .clone()
    }
}

/// One line of `dt ls -l`, before alignment.
pub struct Row {
    pub mode: String,
    pub links: String,
    pub owner: String,
    pub group: String,
    pub size: String,
    pub date: String,
    pub id: String,
    pub type_code: String,
    pub creator: String,
    /// The name as shown (bytes), with ` -> target` for a link.
    pub name: Vec<u8>,
}

impl Row {
    /// The ls columns of `meta`; the deskd columns are `-` until set.
    pub fn new(meta: &Metadata, human: bool, names: &mut Names, now: i64) -> Row {
        Row {
            mode: mode_string(meta),
            links: meta.nlink().to_string(),
            owner: names.user(meta.uid()),
            group: names.group(meta.gid()),
            size: if human {
                human_size(meta.size())
            } else {
                meta.size().to_string()
            },
            date: date_string(meta.mtime(), now),
            id: "-".into(),
            type_code: "-".into(),
            creator: "-".into(),
            name: Vec::new(),
        }
    }
}

/// ls(1)'s `total` line: the blocks the entries take, in 1024-byte units rounded up (with
/// `human`, as a size).
pub fn total_line(blocks_512: u64, human: bool) -> String {
    if human {
        format!("total {}", human_size(blocks_512 * 512))
    } else {
        format!("total {}", blocks_512.div_ceil(2))
    }
}

/// Write the rows with ls(1)'s alignment: numbers right, names of owners and groups left.
pub fn write_rows(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let width = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let links = width(|r| &r.links);
    let owner = width(|r| &r.owner);
    let group = width(|r| &r.group);
    let size = width(|r| &r.size);
    let id = width(|r| &r.id);
    let type_code = width(|r| &r.type_code).max(4);
    let creator = width(|r| &r.creator).max(4);
    for r in rows {
        write!(
            out,
            "{} {:>links$} {:<owner$} {:<group$} {:>size$} {} {:>id$} {:<type_code$} {:<creator$} ",
            r.mode, r.links, r.owner, r.group, r.size, r.date, r.id, r.type_code, r.creator
        )?;
        out.write_all(&r.name)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_round_up_as_ls_does() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(1023), "1023");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1025), "1.1K");
        assert_eq!(human_size(4096), "4.0K");
        assert_eq!(human_size(10 * 1024 - 1), "10K");
        assert_eq!(human_size(12345), "13K");
        assert_eq!(human_size(1024 * 1024), "1.0M");
        assert_eq!(human_size(1024 * 1024 - 1), "1.0M");
    }

    #[test]
    fn permission_strings_show_set_id_and_sticky_bits() {
        assert_eq!(perm_string(0o644), "rw-r--r--");
        assert_eq!(perm_string(0o4755), "rwsr-xr-x");
        assert_eq!(perm_string(0o2640), "rw-r-S---");
        assert_eq!(perm_string(0o1777), "rwxrwxrwt");
        assert_eq!(perm_string(0o1776), "rwxrwxrwT");
    }
}
