//! Man pages and shell completions generated from a binary's own clap definition.
//!
//! Each binary of the package (deskd, dt, prov-backup, fileset) calls [`handle_generate`] first
//! thing in `main`. Run as `BIN __generate-docs DIR`, it writes that binary's pages and
//! completion scripts into `DIR` and exits; with any other arguments it returns at once and the
//! binary parses its command line as usual. `scripts/package-deb.sh` runs it for every binary
//! it packages, so the pages are always those of the binary in the package.
//!
//! `DIR` gets `man1/BIN.1` and one `man1/BIN-VERB.1` per verb (nested verbs too),
//! `bash/BIN`, `zsh/_BIN` and `fish/BIN.fish`: the layout of the package's
//! /usr/share/man/man1, bash-completion, zsh vendor-completions and fish vendor_completions.d.

mod completions;
mod man;
mod write;

use std::path::{Path, PathBuf};

pub use write::WriteError;

/// The hidden first argument that asks a binary for its documentation. It starts with `__` so
/// it can be no volume, path or verb a user means; no `--help` lists it.
pub const GENERATE_WORD: &str = "__generate-docs";

/// If the command line is `BIN __generate-docs DIR`, writes the man pages and completions of
/// `command()` into `DIR` and exits (0 when all were written, 1 otherwise, 2 for a bad command
/// line). Otherwise returns without building the command, so the cost for a normal run is one
/// look at `argv[1]`.
pub fn handle_generate(command: impl FnOnce() -> clap::Command) {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(GENERATE_WORD.as_ref()) {
        return;
    }
    let cmd = command();
    let name = cmd.get_name().to_string();
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: {name} {GENERATE_WORD} DIR");
        std::process::exit(2);
    };
    match generate(cmd, Path::new(&dir)) {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {GENERATE_WORD}: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes the man pages and completion scripts of `cmd` under `dir` (created if missing) and
/// returns the files written. A file that already exists is an error, not overwritten: the
/// files are created new, never through a symlink someone left in `dir`.
pub fn generate(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    // Gives every verb its full name ("deskd serve") and help flags, as at run time. Without
    // clap's `help` verb for the pages: each page is that help, and a `deskd-help(1)` named in
    // the verbs' list would be a page nobody can open.
    let mut pages_cmd = cmd.clone().disable_help_subcommand(true);
    pages_cmd.build();
    let mut cmd = cmd;
    cmd.build();
    let mut written = man::write_pages(&pages_cmd, &dir.join("man1"))?;
    written.extend(completions::write_scripts(&mut cmd, dir)?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn sample() -> Command {
        Command::new("tool")
            .version("1.2.3")
            .about("A sample tool")
            .arg(Arg::new("socket").long("socket").global(true))
            .subcommand(
                Command::new("serve")
                    .about("Serve things")
                    .arg(Arg::new("config").long("config").help("The config file")),
            )
            .subcommand(
                Command::new("outer")
                    .subcommand(Command::new("inner").arg(Arg::new("deep").long("deep"))),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    fn names(files: &[PathBuf], dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_visible_verb_gets_a_page_and_every_shell_a_script() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(sample(), dir.path()).unwrap();
        assert_eq!(
            names(&files, dir.path()),
            [
                "bash/tool",
                "fish/tool.fish",
                "man1/tool-outer-inner.1",
                "man1/tool-outer.1",
                "man1/tool-serve.1",
                "man1/tool.1",
                "zsh/_tool",
            ]
        );
        let serve = std::fs::read_to_string(dir.path().join("man1/tool-serve.1")).unwrap();
        assert!(serve.contains("\\-\\-config"), "{serve}");
        assert!(
            serve.contains(".SH \"SEE ALSO\"\n\\fBtool\\fR(1),"),
            "{serve}"
        );
        assert!(serve.contains("tool serve"), "{serve}");
        let inner = std::fs::read_to_string(dir.path().join("man1/tool-outer-inner.1")).unwrap();
        assert!(inner.contains("\\-\\-deep"), "{inner}");
        assert!(inner.contains("\\fBtool\\-outer\\fR(1)"), "{inner}");
        let top = std::fs::read_to_string(dir.path().join("man1/tool.1")).unwrap();
        assert!(top.contains("tool\\-serve(1)"), "{top}");
        assert!(top.contains("tool 1.2.3"), "{top}");
    }

    #[test]
    fn an_existing_file_or_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir(dir.path().join("man1")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("man1/tool.1")).unwrap();
        let err = generate(sample(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("tool.1"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
