//! The offline admin verbs on a volume whose desktop is in PostgreSQL (issue 28): which
//! database the server's configuration names for a volume (`deskd backup --config`), and the
//! export a backup of such a volume copies ([`deskd_backup::Export`]).
//!
//! A backup of a PostgreSQL volume is an SQLite desktop file, the same format as a backup of
//! an SQLite volume: the volume's records are read in one `REPEATABLE READ` snapshot
//! ([`deskd_pg::transfer::export`]) into a new desktop, which `deskd backup` then copies,
//! checks and describes in its manifest as it does any desktop. So `deskd verify` needs no
//! database, and `deskd restore` puts such a backup back on the volume as its SQLite desktop.

use std::path::{Path, PathBuf};

use deskd_pg::ConnectOptions;

/// A volume whose desktop is in PostgreSQL, as the server's configuration names it.
#[derive(Debug, Clone)]
pub struct PgVolumeRef {
    /// The volume root (absolute, links resolved).
    pub root: PathBuf,
    /// Its name in the database (the root's path, as `deskd serve` names it).
    pub name: String,
    /// The database and its password source (`backend =`).
    pub options: ConnectOptions,
    /// `user@host:port/db` (no password).
    pub shown: String,
}

/// Why a volume's database could not be found out.
#[derive(Debug, thiserror::Error)]
pub enum PgAdminError {
    /// The configuration file is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] deskd_server::ServerError),
    /// The volume root cannot be resolved.
    #[error("{}: {error}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The `backend` target does not parse.
    #[error("{0}")]
    Target(#[from] deskd_pg::PgError),
}

/// The database the configuration file at `config` names for `volume` (its own table, else
/// `[defaults]`, as `deskd serve --config FILE VOLUME` would serve it); None when its desktop
/// is the SQLite file.
pub fn from_config(config: &Path, volume: &Path) -> Result<Option<PgVolumeRef>, PgAdminError> {
    let root = std::fs::canonicalize(volume).map_err(|error| PgAdminError::Io {
        path: volume.to_path_buf(),
        error,
    })?;
    let file = deskd_server::ConfigFile::load(config)?;
    let resolved = file.resolve(deskd_proto::socket_path(None), std::slice::from_ref(&root))?;
    let Some(options) = resolved
        .volumes
        .iter()
        .find(|v| std::fs::canonicalize(&v.root).is_ok_and(|r| r == root))
        .and_then(|v| v.backend.clone())
    else {
        return Ok(None);
    };
    let shown = deskd_pg::connect::describe(&deskd_pg::connect::parse_target(&options.target)?);
    Ok(Some(PgVolumeRef {
        name: root.to_string_lossy().into_owned(),
        root,
        options,
        shown,
    }))
}

impl PgVolumeRef {
    /// What status and the manifest show as the desktop.
    pub fn describe(&self) -> String {
        format!("postgresql {} (volume {:?})", self.shown, self.name)
    }
}

impl deskd_backup::Export for PgVolumeRef {
    fn describe(&self) -> String {
        PgVolumeRef::describe(self)
    }

    fn export(&mut self, file: &Path) -> Result<(), String> {
        let (header, _) = crate::migrate::export_into(&self.options, &self.name, file, &|_| {})
            .map_err(|e| e.to_string())?;
        // The database's volume of this name must be this root's (its identity, stamped on
        // the root at the first serve): a backup of another volume would be restored here.
        match deskd_volume::read_volume_identity(&self.root) {
            Some(stamped) if stamped != header.key.identity => Err(format!(
                "{}: the root is volume identity {stamped:016x}, the database's volume {:?} is \
                 {:016x}: another volume; nothing was backed up",
                self.root.display(),
                self.name,
                header.key.identity
            )),
            _ => Ok(()),
        }
    }
}
