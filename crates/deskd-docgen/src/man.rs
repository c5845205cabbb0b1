//! Man pages (section 1) for a command and each of its visible verbs, with clap_mangen.

use std::path::{Path, PathBuf};

use crate::write::{make_dir, new_file, WriteError};

/// Writes `NAME.1` for `cmd` and `NAME-VERB.1` for every visible verb, nested verbs too.
/// `cmd` must be built (`Command::build`), so verbs carry their full names.
pub(crate) fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    make_dir(dir)?;
    // Every page's footer names the package version, verbs' pages too (clap gives a verb no
    // version of its own).
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut written = Vec::new();
    page(cmd, None, dir, &source, &mut written)?;
    Ok(written)
}

fn page(
    cmd: &clap::Command,
    parent: Option<&str>,
    dir: &Path,
    source: &str,
    written: &mut Vec<PathBuf>,
) -> Result<(), WriteError> {
    // After build(), a verb's display name is "deskd-serve": the page's name and title.
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let path = dir.join(format!("{name}.1"));
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .source(source.to_string())
        .manual("deskd manual")
        .render(&mut roff)
        .map_err(|source| WriteError {
            path: path.clone(),
            source,
        })?;
    roff.extend_from_slice(see_also(parent).as_bytes());
    written.push(new_file(path, &roff)?);
    // clap's own `help` verb needs no page: every page already is its help.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        page(sub, Some(&name), dir, source, written)?;
    }
    Ok(())
}

/// The SEE ALSO section: the page of the command a verb belongs to, and the documents, which
/// say more than the options can (the Debian package installs them in /usr/share/doc/deskd).
fn see_also(parent: Option<&str>) -> String {
    let mut text = String::from(".SH \"SEE ALSO\"\n");
    if let Some(parent) = parent {
        // roff: a '-' in a name is "\-", and \fB…\fR sets it bold.
        text.push_str(&format!("\\fB{}\\fR(1),\n", parent.replace('-', "\\-")));
    }
    text.push_str("README.md and docs/*.md of deskd, in /usr/share/doc/deskd/ when installed\n");
    text.push_str("from its Debian package.\n");
    text
}
