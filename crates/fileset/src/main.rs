//! `fileset`: checkpoint copies of a file set (see the library docs and docs/fileset.md).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use fileset::{FilesetError, Options, UsageError};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Command {
    /// Copy the set from PERMDIR to TMPDIR (at start-up).
    Load,
    /// Save the set from TMPDIR to PERMDIR, atomically (at shutdown or on demand).
    Save,
    /// Check the check file against PERMDIR.
    Test,
}

#[derive(Parser, Debug)]
#[command(
    name = "fileset",
    version,
    about = "Checkpoint copies of a set of files between a permanent and a tmpfs directory",
    after_help = "Exit status: 0 ok; 1 I/O error; 2 check file missing; 3 check file bad (CRC, \
                  version); 4 a file of the set missing; 5 size or mtime mismatch (or not a regular \
                  file); 6 a file the set cannot hold (format 1 limits, a name not UTF-8, not a \
                  regular file); 7 SHA-256 mismatch (format 2); 64 usage error."
)]
struct Cli {
    /// Keep every transfer within 64 KiB boundaries (for DMA engines that need it).
    #[arg(short = '6')]
    boundary_64k: bool,
    /// load: when PERMDIR fails, load the set from this directory instead (factory defaults).
    #[arg(short = 'b', value_name = "BACKUPDIR")]
    backup: Option<PathBuf>,
    /// Name of the check file, in PERMDIR (a plain name: no '/').
    #[arg(short = 'c', value_name = "FNAME", default_value = fileset::DEFAULT_CHECK_NAME)]
    check_name: String,
    /// Create missing directories.
    #[arg(short = 'm')]
    make_dirs: bool,
    /// Files of a new set (shell pattern; up to 16; default "*").
    #[arg(short = 'p', value_name = "PATTERN")]
    patterns: Vec<String>,
    /// save: permission bits of the saved files (octal, e.g. 0640).
    #[arg(short = 'P', value_name = "PERMS", value_parser = parse_perms)]
    perms: Option<u32>,
    /// save: give the saved files this modification time (Unix seconds).
    #[arg(short = 't', value_name = "SAVETIME")]
    save_time: Option<i64>,
    /// More detail on stdout (up to -vvv).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// save: copy only files that changed since the last save.
    #[arg(short = 'x')]
    only_changed: bool,
    /// Check-file format for a new set: 1 (QNX layout) or 2 (64-bit sizes, ns times, paths, SHA-256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    format: u32,
    #[arg(value_enum)]
    command: Command,
    /// The permanent directory (on disk): the saved set and its check file.
    permdir: PathBuf,
    /// The working directory (usually tmpfs); load and save need it, test does not.
    tmpdir: Option<PathBuf>,
}

/// Why a `-P` value is not a permission mode (clap prints it after the option's name).
#[derive(Debug, thiserror::Error)]
enum PermsError {
    #[error("{0:?} is not an octal mode")]
    NotOctal(String),
    #[error("{0:?} is more than 07777")]
    TooLarge(String),
}

fn parse_perms(text: &str) -> Result<u32, PermsError> {
    let v = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| PermsError::NotOctal(text.to_string()))?;
    if v > 0o7777 {
        return Err(PermsError::TooLarge(text.to_string()));
    }
    Ok(v)
}

fn main() -> ExitCode {
    deskd_docgen::handle_generate(<Cli as clap::CommandFactory>::command);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fileset: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), FilesetError> {
    let opts = Options {
        check_name: cli.check_name,
        make_dirs: cli.make_dirs,
        patterns: cli.patterns,
        verbose: cli.verbose,
        only_changed: cli.only_changed,
        save_time: cli.save_time,
        perms: cli.perms,
        boundary_64k: cli.boundary_64k,
        format: cli.format,
        backup: cli.backup,
    };
    let need_tmp = |cmd: &'static str| {
        cli.tmpdir
            .clone()
            .ok_or(FilesetError::Usage(UsageError::NoTmpdir(cmd)))
    };
    match cli.command {
        Command::Load => {
            let tmpdir = need_tmp("load")?;
            let from = fileset::load(&cli.permdir, &tmpdir, &opts)?;
            if from != cli.permdir {
                eprintln!("fileset: loaded the set from {}", from.display());
            }
        }
        Command::Save => {
            let tmpdir = need_tmp("save")?;
            fileset::save(&cli.permdir, &tmpdir, &opts)?;
        }
        Command::Test => {
            let c = fileset::test(&cli.permdir, &opts)?;
            opts.say(1, || {
                format!(
                    "{}: valid, {} files, format {}",
                    cli.permdir.display(),
                    c.entries.len(),
                    c.version
                )
            });
        }
    }
    Ok(())
}
