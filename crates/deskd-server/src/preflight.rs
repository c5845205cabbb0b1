//! The checks of a volume that `deskd serve` (and a reload that adds a volume) makes before any
//! desktop is opened or created: the root is a directory, no other volume's root is above or
//! below it, every user may not write it, and its desktop (when there is one) is of a format
//! this deskd knows. Nothing here creates, opens as a database or changes a file.
//!
//! Volumes below the root are looked for by a walk of the directory listings only when the
//! volume has no desktop yet (the walk costs about what a first rebuild's does, once); a volume
//! that has a desktop was checked when it got it, and a volume made inside it later is refused
//! by its own check of the folders above it. `deskd rebuild`, which walks the whole volume
//! anyway, refuses a desktop it meets below the root every time.

use std::path::{Path, PathBuf};

use deskd_volume::guard;

use crate::config::VolumeConfig;
use crate::error::ServerError;

/// The canonical root of every configured volume that has one, by position.
pub fn canonical_roots(volumes: &[VolumeConfig]) -> Vec<Option<PathBuf>> {
    volumes
        .iter()
        .map(|v| std::fs::canonicalize(&v.root).ok())
        .collect()
}

/// Where the desktop of the volume at `root` is, found without creating anything: the target of
/// a relocation link, the `.Desktop` in the root, or where `desktop_location` would put it.
fn existing_desktop(cfg: &VolumeConfig, root: &Path) -> Result<Option<PathBuf>, ServerError> {
    let in_root = root.join(deskd_volume::DESKTOP_FILE);
    let link = deskd_volume::desktop_link(root).map_err(|source| ServerError::DesktopLink {
        root: root.to_path_buf(),
        source,
    })?;
    let path = match (link, &cfg.desktop_location) {
        (Some(target), _) => target,
        (None, _) if std::fs::symlink_metadata(&in_root).is_ok() => in_root,
        (None, Some(location)) => location
            .join(root.strip_prefix("/").unwrap_or(root))
            .join(deskd_volume::DESKTOP_FILE),
        (None, None) => return Ok(None),
    };
    Ok(std::fs::metadata(&path)
        .is_ok_and(|m| m.len() > 0)
        .then_some(path))
}

/// Check the volume of `cfg`; `others` are the canonical roots of the other volumes served or
/// about to be. Returns the message to log when the volume must not be served.
pub fn check_volume(cfg: &VolumeConfig, others: &[PathBuf]) -> Result<(), ServerError> {
    let root = std::fs::canonicalize(&cfg.root).map_err(|source| ServerError::RootUnresolved {
        root: cfg.root.clone(),
        source,
    })?;
    if !root.is_dir() {
        return Err(ServerError::NotADirectory { root });
    }
    if !cfg.world_writable && guard::world_writable(&root) {
        return Err(ServerError::WorldWritable { root });
    }
    let desktop = existing_desktop(cfg, &root)?;
    if !cfg.nested {
        if let Some(outer) = guard::enclosing_volume(&root) {
            return Err(ServerError::InsideVolume { root, outer });
        }
        for other in others.iter().filter(|o| **o != root) {
            if root.starts_with(other) {
                return Err(ServerError::InsideVolume {
                    root,
                    outer: other.clone(),
                });
            }
            if other.starts_with(&root) {
                return Err(ServerError::AroundVolume {
                    root,
                    inner: other.clone(),
                });
            }
        }
        if desktop.is_none() {
            if let Some(inner) = guard::volume_below(&root) {
                return Err(ServerError::AroundVolume { root, inner });
            }
        }
    }
    if let Some(path) = desktop {
        // The header alone: opening the file as a database is what this check comes before.
        if let Ok(Some(found)) = deskd_db::files::header_format(&path) {
            if found > deskd_db::FORMAT_VERSION {
                return Err(ServerError::DesktopOpen {
                    root,
                    path,
                    source: Box::new(deskd_db::DbError::FormatTooNew {
                        found,
                        supported: deskd_db::FORMAT_VERSION,
                    }),
                });
            }
        }
    }
    Ok(())
}
