//! afpd's per-volume `vol dbpath` folder. afpd keeps its icon, APPL and comment desktop
//! (`.AppleDesktop`) there and fails FPAddIcon, FPAddAPPL and FPGetIcon when it is missing.
//! Netatalk's `cnid_metad` makes it when a volume connects (its `set_dbdir`); the bridge, which
//! stands in for `cnid_metad`, does the same, reading `vol dbpath` from afp.conf as Netatalk's
//! configuration code does (`libatalk/util/netatalk_conf.c`):
//!
//! * `[Global] vol dbnest = yes`: the volume root itself; nothing to make;
//! * the volume section's `vol dbpath`;
//! * else `[Global] vol dbpath`, with `/$v/` added when it holds no variable (pre-3.1.1 style);
//! * else Netatalk's built-in `<statedir>/CNID/$v/` ([`DbPaths::default_template`]).
//!
//! `$v` is the volume's section name with `/` made `:`, as afpd does. The handshake comes from
//! whoever connects to the port, so a folder is made only for a section of afp.conf whose
//! `path` is the volume deskd serves and whose name the handshake gives (without afp.conf,
//! none is made); a template with any other variable (`$u`, `$h`, …) is not expanded (the
//! log says so once).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deskd_proto::ratelimit::RateLimited;

/// Netatalk's `vol dbpath` default when afp.conf names none: Debian's build
/// (`localstatedir=/var/lib`) puts it under `/var/lib/netatalk/CNID/`.
pub const DEFAULT_TEMPLATE: &str = "/var/lib/netatalk/CNID/$v/";

/// Why afp.conf could not be used.
// The cause is part of the message and deliberately not a `source`: printed with anyhow's
// `{:#}` a source would be repeated after the message.
#[derive(Debug, thiserror::Error)]
pub enum DbPathError {
    #[error("{path}: cannot read afp.conf: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not an INI file: {message}")]
    Syntax { path: PathBuf, message: String },
}

/// One volume section of afp.conf.
#[derive(Debug, Clone)]
struct VolumeSection {
    /// The section name as written (afpd's `v_configname`).
    name: String,
    /// Its `path`, as written.
    path: String,
    /// Its own `vol dbpath`, if any.
    dbpath: Option<String>,
}

/// What the bridge knows of afp.conf for making `vol dbpath` folders.
#[derive(Debug)]
pub struct DbPaths {
    /// `[Global] vol dbnest`.
    nest: bool,
    /// `[Global] vol dbpath`.
    global: Option<String>,
    /// The template used when neither the volume nor [Global] names one.
    default_template: String,
    volumes: Vec<VolumeSection>,
}

/// Where afp.conf is, read again at each afpd connection so that an edit applies to the next
/// connection without a restart (as `cnid_metad` reads it per volume it starts).
#[derive(Debug, Clone)]
pub struct AfpConf {
    pub path: PathBuf,
    /// `vol dbpath` of volumes afp.conf names none for.
    pub default_template: String,
}

impl AfpConf {
    /// Read the file now.
    pub fn read(&self) -> Result<DbPaths, DbPathError> {
        DbPaths::load(&self.path, &self.default_template)
    }
}

/// Netatalk's iniparser reads `yes`, `true`, `1` (any case, first letter) as true.
fn ini_true(value: &str) -> bool {
    matches!(
        value.trim().chars().next().map(|c| c.to_ascii_lowercase()),
        Some('y' | 't' | '1')
    )
}

impl DbPaths {
    /// Read `afp_conf`; `default_template` is used where it names no `vol dbpath`.
    pub fn load(afp_conf: &Path, default_template: &str) -> Result<DbPaths, DbPathError> {
        let text = std::fs::read_to_string(afp_conf).map_err(|error| DbPathError::Read {
            path: afp_conf.to_path_buf(),
            error,
        })?;
        Self::parse(&text, default_template).map_err(|message| DbPathError::Syntax {
            path: afp_conf.to_path_buf(),
            message,
        })
    }

    fn parse(text: &str, default_template: &str) -> Result<DbPaths, String> {
        let options = ini::ParseOption {
            enabled_quote: true,
            enabled_escape: false,
            ..Default::default()
        };
        let ini = ini::Ini::load_from_str_opt(text, options).map_err(|e| e.to_string())?;
        let mut out = DbPaths {
            nest: false,
            global: None,
            default_template: default_template.to_owned(),
            volumes: Vec::new(),
        };
        // iniparser, which afpd uses, compares section and key names without case.
        let get = |props: &ini::Properties, key: &str| {
            props
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().to_owned())
        };
        for (section, props) in ini.iter() {
            let Some(section) = section else { continue };
            if section.eq_ignore_ascii_case("global") {
                out.nest = get(props, "vol dbnest").is_some_and(|v| ini_true(&v));
                out.global = get(props, "vol dbpath");
            } else if let Some(path) = get(props, "path") {
                out.volumes.push(VolumeSection {
                    name: section.to_owned(),
                    path,
                    dbpath: get(props, "vol dbpath"),
                });
            }
        }
        Ok(out)
    }

    /// The `vol dbpath` folder of the volume afpd calls `name` and deskd serves at `root`, or
    /// `None` when none is due (dbnest, no such section in afp.conf, a template with other
    /// variables than `$v`).
    pub fn folder_for(&self, name: &[u8], root: &Path) -> Option<PathBuf> {
        if self.nest {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        // `$v` is afpd's volume name with '/' made ':' (so it is one path component); "." and
        // ".." would leave the template's folder.
        let component = name.replace('/', ":");
        if component.is_empty() || component == "." || component == ".." || name.contains('\0') {
            return None;
        }
        let section = self.volumes.iter().find(|v| {
            v.name.eq_ignore_ascii_case(name)
                && std::fs::canonicalize(&v.path).is_ok_and(|p| p == root)
        })?;
        let template = match (&section.dbpath, &self.global) {
            (Some(own), _) => own.clone(),
            (None, Some(global)) if !global.contains('$') => {
                format!("{}/$v/", global.trim_end_matches('/'))
            }
            (None, Some(global)) => global.clone(),
            (None, None) => self.default_template.clone(),
        };
        // The section's own name, not the handshake's spelling of it (which may differ in
        // case): one folder per volume, not one per spelling.
        let component = section.name.replace('/', ":");
        let expanded = template.replace("$v", &component);
        if expanded.contains('$') {
            static WARNED: RateLimited = RateLimited::new(Duration::from_secs(60));
            if WARNED.now() {
                tracing::warn!(
                    "vol dbpath = {template}: only $v is expanded by deskd netatalk; \
                     make the folder afpd needs by hand"
                );
            }
            return None;
        }
        Some(PathBuf::from(expanded))
    }

    /// Make `folder` (and its parents) if it is not there, as `cnid_metad` does (mode 0755).
    pub fn ensure(&self, folder: &Path) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(folder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str, root: &Path) -> DbPaths {
        DbPaths::parse(
            &text.replace("ROOT", root.to_str().unwrap()),
            DEFAULT_TEMPLATE,
        )
        .unwrap()
    }

    #[test]
    fn the_volume_section_wins_over_global_and_v_is_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let c = conf(
            "[Global]\nvol dbpath = /g/$v/\n[Pub]\npath = ROOT\nvol dbpath = /own/$v/x\n",
            &root,
        );
        assert_eq!(
            c.folder_for(b"Pub", &root),
            Some(PathBuf::from("/own/Pub/x"))
        );
        let c = conf("[Global]\nvol dbpath = /g/$v/\n[Pub]\npath = ROOT\n", &root);
        // Any spelling of the name gives the section's own.
        assert_eq!(c.folder_for(b"pub", &root), Some(PathBuf::from("/g/Pub/")));
    }

    #[test]
    fn a_global_path_without_variables_gets_the_volume_name_added() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let c = conf("[Global]\nvol dbpath = /g\n[Pub]\npath = ROOT\n", &root);
        assert_eq!(c.folder_for(b"Pub", &root), Some(PathBuf::from("/g/Pub/")));
        let c = conf("[Pub]\npath = ROOT\n", &root);
        assert_eq!(
            c.folder_for(b"Pub", &root),
            Some(PathBuf::from("/var/lib/netatalk/CNID/Pub/"))
        );
    }

    #[test]
    fn a_handshake_names_only_a_volume_of_afp_conf_at_the_served_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let other = tempfile::tempdir().unwrap();
        let c = conf("[Global]\nvol dbpath = /g/$v/\n[Pub]\npath = ROOT\n", &root);
        // A name afp.conf does not have, or a served root under another section's name.
        assert_eq!(c.folder_for(b"../../etc", &root), None);
        assert_eq!(c.folder_for(b"Other", &root), None);
        assert_eq!(c.folder_for(b"Pub", other.path()), None);
    }

    #[test]
    fn slashes_in_the_name_stay_in_one_component_and_dots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let c = conf(
            "[Global]\nvol dbpath = /g/$v/\n[a/b]\npath = ROOT\n[..]\npath = ROOT\n",
            &root,
        );
        assert_eq!(c.folder_for(b"a/b", &root), Some(PathBuf::from("/g/a:b/")));
        assert_eq!(c.folder_for(b"..", &root), None);
        assert_eq!(c.folder_for(b"", &root), None);
    }

    #[test]
    fn dbnest_and_other_variables_make_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let c = conf("[Global]\nvol dbnest = yes\n[Pub]\npath = ROOT\n", &root);
        assert_eq!(c.folder_for(b"Pub", &root), None);
        let c = conf(
            "[Global]\nvol dbpath = /g/$u/$v\n[Pub]\npath = ROOT\n",
            &root,
        );
        assert_eq!(c.folder_for(b"Pub", &root), None);
    }

    #[test]
    fn ensure_makes_the_folder_and_its_parents_mode_0755() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("CNID/Pub");
        let c = conf("", dir.path());
        c.ensure(&folder).unwrap();
        c.ensure(&folder).unwrap();
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o7777;
        // The process umask may take bits away, never add them.
        assert_eq!(mode & !0o755, 0);
        assert!(folder.is_dir());
    }
}
