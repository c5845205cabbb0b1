//! The content-sync cookie kept in COOKIE_FILE between runs, written atomically.

use std::io::Write;
use std::path::Path;

/// Reads the saved cookie; None when there is none yet.
pub fn load(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => {
            let trimmed: Vec<u8> = b.trim_ascii().to_vec();
            Ok((!trimmed.is_empty()).then_some(trimmed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cookie file {}: {e}", path.display())),
    }
}

/// Replaces the cookie file (temporary name, fsync, rename, directory fsync).
pub fn save(path: &Path, cookie: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let fail = |e: std::io::Error| anyhow::anyhow!("cookie file {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(cookie).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// The oldest CSN named in an OpenLDAP cookie (`rid=001,csn=…[;…]`), for SEARCH_FILTER's
/// %entryCSN%. Only CSN characters pass, so a damaged cookie cannot change the filter.
pub fn csn_of(cookie: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(cookie).ok()?;
    let start = text.find("csn=")? + 4;
    let list = text[start..].split(',').next()?;
    list.split(';')
        .filter(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'#')
        })
        .min()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csn_from_cookies() {
        assert_eq!(
            csn_of(b"rid=001,csn=20240131101500.123456Z#000000#000#000000").as_deref(),
            Some("20240131101500.123456Z#000000#000#000000")
        );
        assert_eq!(
            csn_of(b"rid=000,sid=001,csn=20250101000000.000000Z#000000#001#000000;20240101000000.000000Z#000000#002#000000")
                .as_deref(),
            Some("20240101000000.000000Z#000000#002#000000")
        );
        assert_eq!(csn_of(b"rid=001,csn=)(objectClass=*"), None);
        assert_eq!(csn_of(b"rid=001"), None);
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/cookie");
        assert_eq!(load(&p).unwrap(), None);
        save(&p, b"rid=001,csn=x").unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some(&b"rid=001,csn=x"[..]));
    }
}
