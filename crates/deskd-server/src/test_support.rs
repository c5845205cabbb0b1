//! What the server's unit tests share: a volume's settings as a configuration file without
//! a `[[volume]]` table gives them (the defaults), for a volume at `root`.

use std::path::Path;

use crate::config::{ConfigFile, VolumeConfig};

/// The default settings of a volume at `root`.
pub(crate) fn config_for(root: &Path) -> VolumeConfig {
    ConfigFile::default()
        .resolve("/unused".into(), &[root.to_path_buf()])
        .unwrap()
        .volumes
        .remove(0)
}
