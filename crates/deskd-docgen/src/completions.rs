//! Completion scripts for bash, zsh and fish, with clap_complete.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::write::{make_dir, new_file, WriteError};

/// Writes `bash/NAME`, `zsh/_NAME` and `fish/NAME.fish` under `dir`: the file names each
/// shell's completion loader looks for when it meets the command NAME.
pub(crate) fn write_scripts(
    cmd: &mut clap::Command,
    dir: &Path,
) -> Result<Vec<PathBuf>, WriteError> {
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let shell_dir = dir.join(sub);
        make_dir(&shell_dir)?;
        let mut script = Vec::new();
        clap_complete::generate(shell, cmd, &name, &mut script);
        written.push(new_file(shell_dir.join(file), &script)?);
    }
    Ok(written)
}
