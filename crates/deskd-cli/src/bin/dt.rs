//! `dt`: POSIX file verbs that keep IDs, resource files, the xattr mirror and the desktop
//! consistent. Outside any volume each verb behaves like the plain command.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use deskd_cli::at;
use deskd_cli::connection::ConnectionArgs;
use deskd_cli::fresh_ids::{clear_tree, copy_record_cleared};
use deskd_cli::fsops::{copy_tree, copy_tree_with, remove_any, set_times, CopyMode};
use deskd_cli::interact::{self, quote};
use deskd_cli::mode;
use deskd_cli::output::{ctime_string, display_bytes, fourcc, write_match, FindArgs};
use deskd_cli::target::{InVolume, Place, Session};
use deskd_cli::walk::{copied_order, removal_order, what_it_is};
use deskd_cli::{finder, listing};
use deskd_client::{FindMode, ObjectInfo, Request, Response};
use deskd_volume::rsrc;

#[derive(Parser)]
#[command(
    name = "dt",
    version,
    about = "File verbs that keep deskd IDs, resource files and the desktop right"
)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create directories.
    Mkdir {
        /// Create missing parents; no error if the directory exists.
        #[arg(short, long)]
        parents: bool,
        /// The mode of the directories made (octal or symbolic, as chmod takes it; the umask
        /// does not apply); with -p, missing parents get the default mode.
        #[arg(
            short,
            long,
            value_name = "MODE",
            value_parser = mode_arg(),
            allow_hyphen_values = true
        )]
        mode: Option<mode::ModeSpec>,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Create files or update their times.
    #[command(disable_help_flag = true)]
    Touch {
        /// Do not create missing files.
        #[arg(short = 'c', long = "no-create")]
        no_create: bool,
        /// Change a symbolic link itself, never what it names (dt touch always does).
        #[arg(short = 'h', long = "no-dereference")]
        _no_dereference: bool,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Move or rename, replacing an existing target as mv(1) does; inside one volume every
    /// ID stays (the moved object's; a replaced object's ID is retired).
    Mv {
        /// Replace an existing target without asking (the default; cancels -i and -n).
        #[arg(short, long, overrides_with_all = ["interactive", "no_clobber"])]
        force: bool,
        /// Ask on stderr before replacing an existing target ("y" or "Y" answers yes).
        #[arg(short, long, overrides_with_all = ["force", "no_clobber"])]
        interactive: bool,
        /// Never replace an existing target (skip that source).
        #[arg(short = 'n', long = "no-clobber", overrides_with_all = ["force", "interactive"])]
        no_clobber: bool,
        /// Say what was moved (`renamed 'a' -> 'b'`).
        #[arg(short, long)]
        verbose: bool,
        /// What to move.
        #[arg(required = true, num_args = 1.., value_name = "SOURCE")]
        sources: Vec<PathBuf>,
        /// The new name, or the directory to move into (which it must be for several sources).
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// Remove files (and with -r directories).
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// Ignore missing files, never ask (cancels -i).
        #[arg(short, long, overrides_with = "interactive")]
        force: bool,
        /// Ask on stderr before each removal ("y" or "Y" answers yes); with -r, whether to
        /// descend into a directory, then each entry, then the directory.
        #[arg(short, long, overrides_with = "force")]
        interactive: bool,
        /// Say what was removed (`removed 'a'`, `removed directory 'd'`).
        #[arg(short, long)]
        verbose: bool,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Remove empty directories.
    Rmdir {
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// List directories; -l adds ls -l's columns and ID, type and creator.
    #[command(disable_help_flag = true)]
    Ls {
        /// Long format: mode, links, owner, group, size, date, ID, type, creator, name.
        #[arg(short = 'l')]
        long: bool,
        /// Show names that start with '.', `.` and `..` too (deskd's own names never show).
        #[arg(short = 'a', long, overrides_with = "almost_all")]
        all: bool,
        /// Show names that start with '.', but not `.` and `..`.
        #[arg(short = 'A', long = "almost-all", overrides_with = "all")]
        almost_all: bool,
        /// List subdirectories recursively.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// List directories themselves, not what is in them.
        #[arg(short = 'd', long)]
        directory: bool,
        /// Newest first (by modification time).
        #[arg(short = 't', overrides_with = "by_size")]
        by_time: bool,
        /// Largest first.
        #[arg(short = 'S', overrides_with = "by_time")]
        by_size: bool,
        /// Reverse the order.
        #[arg(short = 'r', long)]
        reverse: bool,
        /// One name per line (what dt ls always prints).
        #[arg(short = '1')]
        _one_per_line: bool,
        /// With -l, sizes as 1.0K, 23M, ... (powers of 1024), as ls -h.
        #[arg(short = 'h', long = "human-readable")]
        human: bool,
        /// Directories or files to list (default: the current directory).
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Show ID, parent ID, kind, type, creator, Finder flags and label, comment and dates
    /// (registering unseen objects).
    Info {
        /// One JSON object per path per line.
        #[arg(long)]
        json: bool,
        /// Paths in a volume.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Copy files (with -R directories). Copies in a volume get new IDs (--keep-ids: restore
    /// them from the resource files); type, creator, comment and resource fork travel with
    /// them. An existing file is overwritten and keeps its ID.
    Cp {
        /// Copy directories and everything in them (symbolic links are copied as links).
        #[arg(short = 'R', short_alias = 'r', long)]
        recursive: bool,
        /// Keep modes, times and (as root) owners.
        #[arg(short, long)]
        preserve: bool,
        /// Archive: -R and -p together (links are copied as links), as cp -a.
        #[arg(short, long)]
        archive: bool,
        /// Do not overwrite an existing file (cancels -i).
        #[arg(short = 'n', long = "no-clobber", overrides_with = "interactive")]
        no_clobber: bool,
        /// Ask on stderr before overwriting an existing file ("y" or "Y" answers yes).
        #[arg(short, long, overrides_with = "no_clobber")]
        interactive: bool,
        /// Say what was copied (`'a' -> 'b'`, each object of a tree).
        #[arg(short, long)]
        verbose: bool,
        /// Restore: keep the IDs the copied resource files carry wherever
        /// the volume has them free, so aliases to the files work again; an ID in use (a tree
        /// restored twice) gets a new one. For copies of this volume's own files, such as a
        /// file-level backup of it.
        #[arg(long)]
        keep_ids: bool,
        /// What to copy.
        #[arg(required = true, num_args = 1.., value_name = "SOURCE")]
        sources: Vec<PathBuf>,
        /// The copy's name, or the directory to copy into (which it must be for several
        /// sources).
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// Change modes (octal, or chmod's symbolic form: u+x, go-w, a=rX, ...). Resource files
    /// follow their objects.
    Chmod {
        /// Also everything below each directory (symbolic links are not followed).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Say what each object's mode was and became (`mode of 'f' changed from ...`).
        #[arg(short, long)]
        verbose: bool,
        /// Like -v, but only for the objects whose mode changed.
        #[arg(short, long)]
        changes: bool,
        /// The mode: 640, u+x,go-w, a=rX, ... (an invalid mode is a usage error).
        #[arg(value_name = "MODE", value_parser = mode_arg(), allow_hyphen_values = true)]
        mode: mode::ModeSpec,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Change owner (and group). Resource files follow their objects.
    #[command(disable_help_flag = true)]
    Chown {
        /// Also everything below each directory (links themselves, never their targets).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Change a symbolic link given as an operand itself, not what it names.
        #[arg(short = 'h', long = "no-dereference")]
        no_dereference: bool,
        /// USER, USER:GROUP, USER: (the user's login group) or :GROUP; names or numbers.
        #[arg(value_name = "OWNER[:GROUP]")]
        owner: String,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Change group. Resource files follow their objects.
    #[command(disable_help_flag = true)]
    Chgrp {
        /// Also everything below each directory (links themselves, never their targets).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Change a symbolic link given as an operand itself, not what it names.
        #[arg(short = 'h', long = "no-dereference")]
        no_dereference: bool,
        /// The group, by name or number.
        #[arg(value_name = "GROUP")]
        group: String,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Set Mac file information: type, creator, Finder flags, label, comment (in the desktop
    /// and the resource file alike).
    #[command(
        group(clap::ArgGroup::new("what").required(true).multiple(true)),
        override_usage = "dt set [-t TYPE] [-c CREATOR] [-f FLAGS] [-l LABEL] [--comment TEXT] \
                          [OPTIONS] PATH..."
    )]
    Set {
        /// Type code, 4 characters (e.g. TEXT, APPL); APPL registers the application.
        #[arg(
            short = 't',
            long = "type",
            group = "what",
            value_name = "TYPE",
            value_parser = WithUsage(parse_code)
        )]
        type_code: Option<[u8; 4]>,
        /// Creator code, 4 characters (e.g. ttxt).
        #[arg(
            short = 'c',
            long,
            group = "what",
            value_name = "CREATOR",
            value_parser = WithUsage(parse_code)
        )]
        creator: Option<[u8; 4]>,
        /// Finder flags: a number (decimal or 0x hex) replaces them all; ad set letters
        /// (uppercase sets, lowercase clears: d e m n i c t s b v a) or names (+invisible,
        /// -on-desk, ...; comma-separated) change only those.
        #[arg(
            short = 'f',
            long,
            group = "what",
            allow_hyphen_values = true,
            value_parser = WithUsage(finder::parse_flags)
        )]
        flags: Option<finder::FlagsChange>,
        /// Color label: none, grey, green, violet, blue, yellow, red, orange, or 0-7.
        #[arg(
            short = 'l',
            long,
            group = "what",
            hide_possible_values = true,
            value_parser = Suggesting(WithUsage(finder::parse_label), &finder::LABELS)
        )]
        label: Option<u8>,
        /// Finder comment; "" removes it.
        #[arg(long, group = "what", value_name = "TEXT")]
        comment: Option<String>,
        /// Objects in a volume.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Find objects by name below DIR, from the desktop (no disk scan): substring by default,
    /// case-insensitive, NFC = NFD.
    Find {
        #[command(flatten)]
        matching: FindArgs,
        /// A directory in a volume (its volume root for all of it).
        dir: PathBuf,
        /// The name, or part of it, to look for.
        pattern: String,
    },
    /// Print the absolute path of object ID in VOLUME.
    Resolve {
        /// The volume's root directory.
        volume: PathBuf,
        /// The object's ID.
        id: u32,
    },
}

impl Command {
    /// The verb's name when it only looks at volumes (registering what it shows at most):
    /// its errors then fit a reader, not a writer (see `Session::for_reading`).
    fn reading_verb(&self) -> Option<&'static str> {
        match self {
            Command::Ls { .. } => Some("ls"),
            Command::Info { .. } => Some("info"),
            Command::Find { .. } => Some("find"),
            Command::Resolve { .. } => Some("resolve"),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    deskd_docgen::handle_generate(<Cli as clap::CommandFactory>::command);
    // `dt ls | head` ends quietly, as ls(1) does (only the listing verbs write to stdout).
    deskd_cli::output::end_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    let session = Session::new(cli.connection.address());
    let mut dt = Dt {
        session: match cli.command.reading_verb() {
            Some(verb) => session.for_reading(verb),
            None => session,
        },
        failed: false,
        serious: false,
    };
    if let Err(e) = dt.run(cli.command) {
        eprintln!("dt: {}", at::readable(&format!("{e:#}")));
        return ExitCode::from(1);
    }
    if dt.serious {
        ExitCode::from(2)
    } else if dt.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

struct Dt {
    session: Session,
    /// An operand failed: exit status 1.
    failed: bool,
    /// `dt ls` could not reach an operand: exit status 2, as ls(1).
    serious: bool,
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// `Ok` when `p` is there (a symbolic link itself counts); else why not, as the system says
/// it, so a name the user may not look at is reported as permission denied, not as missing.
/// Errors name `shown`, the path as the user gave it.
fn must_exist(p: &Path, shown: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: no such file or directory", shown.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!("{}: permission denied", shown.display())
        }
        Err(e) => bail!("{}: {e}", shown.display()),
    }
}

fn name_of(p: &Path) -> Result<&OsStr> {
    p.file_name()
        .ok_or_else(|| anyhow!("{}: has no file name", p.display()))
}

impl Dt {
    /// Run `f` for each operand; report failures and carry on, like the POSIX tools.
    fn each(&mut self, paths: &[PathBuf], mut f: impl FnMut(&mut Self, &Path) -> Result<()>) {
        for p in paths {
            if let Err(e) = f(self, p) {
                eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                self.failed = true;
            }
        }
    }

    fn run(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Mkdir {
                parents,
                mode,
                paths,
            } => self.each(&paths, |dt, p| dt.mkdir(p, parents, mode.as_ref())),
            Command::Touch {
                no_create, paths, ..
            } => self.each(&paths, |dt, p| dt.touch(p, no_create)),
            Command::Rm {
                recursive,
                force,
                interactive,
                verbose,
                paths,
            } => {
                let how = RmHow {
                    recursive,
                    force,
                    interactive,
                    verbose,
                };
                self.each(&paths, |dt, p| dt.rm(p, how))
            }
            Command::Rmdir { paths } => self.each(&paths, |dt, p| dt.rmdir(p)),
            Command::Mv {
                interactive,
                no_clobber,
                verbose,
                sources,
                dest: target,
                ..
            } => {
                let replace = if no_clobber {
                    Replace::Never
                } else if interactive {
                    Replace::Ask
                } else {
                    Replace::Always
                };
                let into_dir = fs::metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
                if sources.len() > 1 && !into_dir {
                    bail!("target {} is not a directory", quote(&target));
                }
                self.each(&sources, |dt, src| {
                    let inside = target.join(name_of(src)?);
                    // A source that is gone with nothing of its name in the target directory:
                    // the target itself may be what it became in a move that was cut short
                    // (see Dt::resume_move), as `dt mv SRC DEST` made it.
                    let cut_short = !exists(src) && !exists(&inside);
                    let dest = if into_dir && !cut_short {
                        inside
                    } else {
                        target.clone()
                    };
                    if dt.mv(src, &dest, replace)? && verbose {
                        interact::tell(&format!("renamed {} -> {}", quote(src), quote(&dest)));
                    }
                    Ok(())
                });
            }
            Command::Ls {
                long,
                all,
                almost_all,
                recursive,
                directory,
                human,
                by_time,
                by_size,
                reverse,
                paths,
                ..
            } => {
                let paths = if paths.is_empty() {
                    vec![PathBuf::from(".")]
                } else {
                    paths
                };
                let how = LsHow {
                    long,
                    dots: all,
                    all: all || almost_all,
                    recursive: recursive && !directory,
                    directory,
                    human,
                    // Of -t and -S the last given counts, as for ls(1).
                    sort: if by_size {
                        LsSort::Size
                    } else if by_time {
                        LsSort::Time
                    } else {
                        LsSort::Name
                    },
                    reverse,
                };
                self.ls_operands(&paths, how)?;
            }
            Command::Info { json, paths } => self.each(&paths, |dt, p| dt.info(p, json)),
            Command::Resolve { volume, id } => self.resolve(&volume, id)?,
            Command::Cp {
                recursive,
                preserve,
                archive,
                no_clobber,
                interactive,
                verbose,
                keep_ids,
                sources,
                dest: target,
            } => {
                let into_dir = fs::metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
                if sources.len() > 1 && !into_dir {
                    bail!("target {} is not a directory", quote(&target));
                }
                let how = CopyMode {
                    preserve: preserve || archive,
                    umask: mode::umask(),
                    // Set per operand: only a copy arriving in a volume gets new IDs.
                    fresh_ids: false,
                };
                let what = CpHow {
                    recursive: recursive || archive,
                    replace: if no_clobber {
                        Replace::Never
                    } else if interactive {
                        Replace::Ask
                    } else {
                        Replace::Always
                    },
                    keep_ids,
                    verbose,
                };
                self.each(&sources, |dt, src| {
                    let dest = if into_dir {
                        target.join(name_of(src)?)
                    } else {
                        target.clone()
                    };
                    dt.cp(src, &dest, what, how)
                });
            }
            Command::Chmod {
                recursive,
                verbose,
                changes,
                mode: spec,
                paths,
            } => {
                let umask = mode::umask();
                self.each(&paths, |dt, p| {
                    if verbose && fs::metadata(p).is_err() {
                        // chmod -v's line for an operand it cannot reach (the error follows).
                        interact::tell(&format!("{} could not be accessed", quote(p)));
                    }
                    let kept_by_umask = std::cell::Cell::new(false);
                    let result = dt.change(p, recursive, true, &mut |path, shown, meta| {
                        let old = meta.mode() & 0o7777;
                        let new = spec.apply(meta.mode(), meta.is_dir(), umask);
                        fs::set_permissions(path, fs::Permissions::from_mode(new))
                            .with_context(|| format!("cannot change mode of {}", quote(shown)))?;
                        let new = new & 0o7777;
                        // As chmod(1): a clause naming no class left bits the umask guards,
                        // which the user may not expect; said, and the exit status is 1.
                        let naive = spec.apply(meta.mode(), meta.is_dir(), 0) & 0o7777;
                        if new & !naive != 0 {
                            eprintln!(
                                "dt: {}: new permissions are {}, not {}",
                                shown.display(),
                                listing::perm_string(new),
                                listing::perm_string(naive)
                            );
                            kept_by_umask.set(true);
                        }
                        if old != new && (verbose || changes) {
                            interact::tell(&format!(
                                "mode of {} changed from {old:04o} ({}) to {new:04o} ({})",
                                quote(shown),
                                listing::perm_string(old),
                                listing::perm_string(new)
                            ));
                        } else if old == new && verbose {
                            interact::tell(&format!(
                                "mode of {} retained as {old:04o} ({})",
                                quote(shown),
                                listing::perm_string(old)
                            ));
                        }
                        Ok(Change::Mode(new))
                    });
                    if kept_by_umask.get() {
                        dt.failed = true;
                    }
                    result
                });
            }
            Command::Chown {
                recursive,
                no_dereference,
                owner,
                paths,
                ..
            } => {
                let (uid, gid) = mode::parse_owner(&owner).map_err(|e| anyhow!(e))?;
                self.each(&paths, |dt, p| {
                    dt.change_owner(p, recursive, !no_dereference, uid, gid)
                });
            }
            Command::Chgrp {
                recursive,
                no_dereference,
                group,
                paths,
                ..
            } => {
                let gid = mode::group_id(&group).map_err(|e| anyhow!(e))?;
                self.each(&paths, |dt, p| {
                    dt.change_owner(p, recursive, !no_dereference, None, Some(gid))
                });
            }
            Command::Set {
                type_code,
                creator,
                flags,
                label,
                comment,
                paths,
            } => {
                let info = MacInfo {
                    type_code,
                    creator,
                    flags,
                    label,
                    comment,
                };
                self.each(&paths, |dt, p| dt.set(p, &info))
            }
            Command::Find {
                matching,
                dir,
                pattern,
            } => {
                self.find(&dir, &pattern, matching.mode(&pattern), matching.json)?;
            }
        }
        Ok(())
    }

    /// `dt cp` of one source to `dest` (the final name).
    fn cp(&mut self, src: &Path, dest: &Path, what: CpHow, how: CopyMode) -> Result<()> {
        let CpHow {
            recursive,
            keep_ids,
            ..
        } = what;
        let from = self.session.place(src)?;
        let to = self.session.place(dest)?;
        let from_abs =
            from.abs_unless_root(src, "cannot copy a volume root (copy what is in it)")?;
        let to_abs = to.abs_unless_root(dest, "cannot replace a volume root")?;
        // Without -R a link given as the source is copied as the file it names, as cp(1) does;
        // in a volume such a link never leads out of it (place() refuses that).
        let meta = if recursive {
            fs::symlink_metadata(&from_abs)
        } else {
            fs::metadata(&from_abs)
        }
        .with_context(|| format!("cannot copy {}", src.display()))?;
        at::race_pause("cp-looked");
        if meta.is_dir() && !recursive {
            bail!("cannot copy {}: is a directory (use -R)", src.display());
        }
        if meta.is_dir() && to_abs.starts_with(&from_abs) {
            bail!("cannot copy {} into itself", src.display());
        }
        if let Place::Inside(b) = &to {
            self.session.check_writable(b)?;
        }
        // In a volume, the copy's folder pinned from the root without following a link, outside
        // it opened once by the name given: the copy, an overwritten file and the top record
        // land where the checks found the folder (docs/security.md, "dt's path races").
        let cannot = || format!("cannot copy {} to {}", src.display(), dest.display());
        let to_pin = match &to {
            Place::Inside(b) => at::pin_in_volume(b.volume.root(), &b.components),
            Place::Outside(_) => at::pin(&to_abs),
        }
        .with_context(cannot)?;
        if let Ok(existing) = at::lstat_at(to_pin.dir(), to_pin.name()) {
            if meta.is_dir() || at::is_dir(&existing) {
                bail!(
                    "cannot copy {} to {}: target exists (dt cp does not merge directories, nor put a file in a directory's place)",
                    src.display(),
                    dest.display()
                );
            }
            // Outside a volume a link as the target is written through, as cp(1) does.
            let target = match &to {
                Place::Outside(_) if at::is_symlink(&existing) => {
                    rustix::fs::statat(to_pin.dir(), to_pin.name(), rustix::fs::AtFlags::empty())
                        .map_err(std::io::Error::from)
                        .with_context(cannot)?
                }
                _ => existing,
            };
            if meta.file_type().is_symlink() {
                // -R copies a link as a link; its data is not written into the file there.
                bail!(
                    "cannot copy {} to {}: a symbolic link onto an existing file (remove the target first)",
                    src.display(),
                    dest.display()
                );
            }
            if target.st_dev == meta.dev() && target.st_ino == meta.ino() {
                bail!("{} and {} are the same file", src.display(), dest.display());
            }
            match what.replace {
                Replace::Always => {}
                Replace::Never => return Ok(()),
                Replace::Ask => {
                    if !interact::ask(&format!("overwrite {}", quote(dest))) {
                        return Ok(());
                    }
                }
            }
            // The source read from its folder opened once, and only if it is what was looked
            // at: a name swapped for a link to another file is not copied for the folder's owner.
            let from_pin = match &from {
                Place::Inside(a) => at::pin_in_volume(a.volume.root(), &a.components),
                Place::Outside(_) => at::pin(&from_abs),
            }
            .with_context(cannot)?;
            at::race_pause("cp-exists");
            self.overwrite((&from_pin, &meta, !recursive), (&to_pin, &target), &to, how)
                .with_context(cannot)?;
            if what.verbose {
                interact::tell(&format!("{} -> {}", quote(src), quote(dest)));
            }
            return Ok(());
        }
        let source = if recursive {
            from_abs.clone()
        } else {
            fs::canonicalize(&from_abs)?
        };
        // A copy in a volume gets new IDs: its resource files are written without the
        // originals' (a dt killed midway leaves none for a rebuild to take), unless restoring.
        let how = CopyMode {
            fresh_ids: matches!(to, Place::Inside(_)) && !keep_ids,
            ..how
        };
        let to_pin = match &to {
            Place::Inside(_) => Some(to_pin),
            Place::Outside(_) => None,
        };
        at::race_pause("cp-placed");
        let copy_to = to_pin.as_ref().map_or_else(|| to_abs.clone(), |p| p.path());
        copy_tree_with(&source, &copy_to, how).with_context(cannot)?;
        test_pause("copied");
        if let Place::Inside(b) = &to {
            // The top object's record lives beside it, not in the copied tree. A tree from
            // outside any volume (a file-level backup of one) may have it beside it too.
            // Both records through their folders' `.rsrc` opened without following a link: a
            // `.rsrc` symlink in the source's folder must not make dt copy whatever file of
            // that name lies where it points (review 2, finding 4).
            let source_pin = match &from {
                Place::Inside(a) if a.components.is_empty() => None,
                Place::Inside(a) => at::pin_in_volume(a.volume.root(), &a.components).ok(),
                Place::Outside(a) => at::pin(a).ok(),
            };
            let top_record = source_pin
                .as_ref()
                .filter(|p| p.check_rsrc().is_ok())
                .map(|p| p.rsrc_path());
            if let Some(p) = &to_pin {
                p.check_rsrc()?;
            }
            let to_record = to_pin
                .as_ref()
                .map_or_else(|| b.rsrc_path(), |p| p.rsrc_path());
            if let Some(record) =
                top_record.filter(|r| fs::symlink_metadata(r).is_ok_and(|m| m.is_file()))
            {
                if keep_ids {
                    rsrc::make_rsrc_dir(&to_record)?;
                    rsrc::copy_file(&record, &to_record)?;
                } else {
                    copy_record_cleared(&record, &to_record)?;
                }
                // The copy's record is as private as the copy (a 0600 file's comment stays so).
                if let Some(p) = &to_pin {
                    record_follows_object(b, p).with_context(cannot)?;
                }
            }
            // A copy is a new object (new IDs, Mac information kept), unless restoring.
            self.register_tree(b, keep_ids)?;
        }
        if what.verbose {
            let in_volume = matches!(from, Place::Inside(_)) || matches!(to, Place::Inside(_));
            for rel in copied_order(&to_abs, Path::new(""), in_volume) {
                // The top as given (no trailing slash from joining an empty path).
                let (s, d) = if rel.as_os_str().is_empty() {
                    (src.to_path_buf(), dest.to_path_buf())
                } else {
                    (src.join(&rel), dest.join(&rel))
                };
                interact::tell(&format!("{} -> {}", quote(&s), quote(&d)));
            }
        }
        Ok(())
    }

    /// Overwrite an existing file's data in place, as cp(1) does: it stays the same object and
    /// keeps its ID and Mac information.
    ///
    /// `from`: the source's pinned name, the stat looked at and whether a final link is
    /// followed (not with `-R`); `to`: the target's pinned name and the stat looked at. Both
    /// are opened relative to their pinned folders and must be the objects looked at, else
    /// "replaced while being worked on" (docs/security.md, "dt's path races").
    fn overwrite(
        &mut self,
        (from, seen, follow): (&at::Pinned, &fs::Metadata, bool),
        (to, target): (&at::Pinned, &rustix::fs::Stat),
        to_place: &Place,
        how: CopyMode,
    ) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        let source = match rustix::fs::openat(from.dir(), from.name(), flags, Mode::empty()) {
            Err(e) if e == rustix::io::Errno::LOOP => return Err(at::replaced().into()),
            other => other.map_err(std::io::Error::from)?,
        };
        let st = rustix::fs::fstat(&source).map_err(std::io::Error::from)?;
        if st.st_dev != seen.dev() || st.st_ino != seen.ino() {
            return Err(at::replaced().into());
        }
        let mut source = fs::File::from(source);
        let mut flags = OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
        if let Place::Inside(_) = to_place {
            // A link planted in a volume is not written through.
            flags |= OFlags::NOFOLLOW;
        }
        let dest = match rustix::fs::openat(to.dir(), to.name(), flags, Mode::empty()) {
            Err(e) if e == rustix::io::Errno::LOOP => return Err(at::replaced().into()),
            other => other.map_err(std::io::Error::from)?,
        };
        // Emptied only once it is known to be the file looked at.
        if !at::same(
            &rustix::fs::fstat(&dest).map_err(std::io::Error::from)?,
            target,
        ) {
            return Err(at::replaced().into());
        }
        let mut dest = fs::File::from(dest);
        dest.set_len(0)?;
        std::io::copy(&mut source, &mut dest)?;
        if how.preserve {
            // Owner, mode and times through the descriptor written, never by the name again
            // (docs/security.md, "dt's path races"); owner first, as it clears set-ID bits.
            let meta = source.metadata()?;
            match rustix::fs::fchown(
                &dest,
                Some(rustix::process::Uid::from_raw(meta.uid())),
                Some(rustix::process::Gid::from_raw(meta.gid())),
            ) {
                Err(e) if e != rustix::io::Errno::PERM => {
                    return Err(std::io::Error::from(e).into())
                }
                _ => {}
            }
            dest.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            let time = |s: i64, ns: i64| rustix::fs::Timespec {
                tv_sec: s as _,
                tv_nsec: ns as _,
            };
            let times = rustix::fs::Timestamps {
                last_access: time(meta.atime(), meta.atime_nsec()),
                last_modification: time(meta.mtime(), meta.mtime_nsec()),
            };
            rustix::fs::futimens(&dest, &times).map_err(std::io::Error::from)?;
        }
        if let Place::Inside(b) = to_place {
            self.session.register(b, true)?;
        }
        Ok(())
    }

    /// Apply `f` to `path` (and with `recursive` to everything below it, never through a
    /// link), then make the resource records of each object in a volume follow it.
    fn change(
        &mut self,
        path: &Path,
        recursive: bool,
        dereference: bool,
        f: &mut ChangeFn<'_>,
    ) -> Result<()> {
        let place = self.session.place(path)?;
        let cannot = || format!("cannot access {}", quote(path));
        // The operand's folder resolved once (in a volume from the root, never through a
        // link), and every object changed through a descriptor of its own: a name swapped for
        // a symlink after the look is never followed (docs/security.md, "dt's path races").
        let (pinned, inside) = match place {
            Place::Outside(abs) => (at::pin(&abs).with_context(cannot)?, None),
            Place::Inside(iv) => {
                self.session.check_writable(&iv)?;
                if iv.components.is_empty() {
                    let root = iv.path();
                    (at::pin(&root).with_context(cannot)?, Some(iv))
                } else {
                    let pinned =
                        at::pin_in_volume(iv.volume.root(), &iv.components).with_context(cannot)?;
                    (pinned, Some(iv))
                }
            }
        };
        // The operand itself is followed if it is a link, as chmod(1) and chown(1) do (chown
        // -h: not).
        let object = at::open_path_at(pinned.dir(), pinned.name(), dereference)
            .map(fs::File::from)
            .with_context(cannot)?;
        let meta = object.metadata().with_context(cannot)?;
        if meta.file_type().is_symlink() {
            // `chown -h` of a link: by its name in the pinned folder (never followed).
            let change = f(&pinned.path(), path, &meta)?;
            if let Some(iv) = &inside {
                follow_records(iv, false, change)?;
            }
            return Ok(());
        }
        self.change_tree(&object, path, inside.as_ref(), &meta, recursive, f)
    }

    /// Change the object open (`O_PATH`) at `object` and, with `recursive`, everything below
    /// it, walked by descriptors: `f` gets `/proc/self/fd/N` of the very object.
    fn change_tree(
        &mut self,
        object: &fs::File,
        shown: &Path,
        inside: Option<&InVolume>,
        meta: &fs::Metadata,
        recursive: bool,
        f: &mut ChangeFn<'_>,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", object.as_raw_fd()));
        let change = f(&fd_path, shown, meta)?;
        if let Some(iv) = inside {
            follow_records(iv, meta.is_dir(), change)?;
        }
        if !(recursive && meta.is_dir()) {
            return Ok(());
        }
        let cannot_read = || format!("cannot read directory {}", quote(shown));
        let dir = rustix::fs::openat(
            object,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .with_context(cannot_read)?;
        let names = at::names(dir.as_fd()).with_context(cannot_read)?;
        for name in names {
            // In a volume deskd's own names follow their objects instead of being walked.
            if inside.is_some() && deskd_volume::is_protected(name.as_bytes()) {
                continue;
            }
            let child_shown = shown.join(&name);
            at::race_pause("change-listed");
            // Never through a link: a link opens as itself.
            let child = match at::open_path_at(dir.as_fd(), &name, false) {
                Ok(fd) => fs::File::from(fd),
                Err(e) => {
                    eprintln!(
                        "dt: cannot access {}: {}",
                        quote(&child_shown),
                        interact::io_text(&e)
                    );
                    self.failed = true;
                    continue;
                }
            };
            let child_meta = child.metadata()?;
            if child_meta.file_type().is_symlink() {
                // Links themselves: chmod(1) -R leaves them, chown(1) -R changes the link.
                if let Change::Owner(uid, gid) = change {
                    rustix::fs::chownat(
                        &dir,
                        &name,
                        uid.map(rustix::process::Uid::from_raw),
                        gid.map(rustix::process::Gid::from_raw),
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(std::io::Error::from)
                    .with_context(|| format!("cannot change owner of {}", quote(&child_shown)))?;
                }
                continue;
            }
            let child_iv = inside.map(|iv| iv.child(name.as_bytes()));
            // As chmod -R does: report an entry that fails and go on with the rest.
            if let Err(e) = self.change_tree(
                &child,
                &child_shown,
                child_iv.as_ref(),
                &child_meta,
                recursive,
                f,
            ) {
                eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                self.failed = true;
            }
        }
        Ok(())
    }

    fn change_owner(
        &mut self,
        path: &Path,
        recursive: bool,
        dereference: bool,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.change(path, recursive, dereference, &mut |p, shown, meta| {
            if meta.file_type().is_symlink() {
                std::os::unix::fs::lchown(p, uid, gid)
            } else {
                std::os::unix::fs::chown(p, uid, gid)
            }
            .with_context(|| format!("cannot change owner of {}", quote(shown)))?;
            Ok(Change::Owner(uid, gid))
        })
    }

    /// `dt set`: Mac information into the desktop and the resource file.
    fn set(&mut self, path: &Path, info: &MacInfo) -> Result<()> {
        let MacInfo {
            type_code, creator, ..
        } = *info;
        let comment = info.comment.as_deref();
        let Place::Inside(iv) = self.session.place(path)? else {
            bail!(
                "{}: not in a deskd volume (no .Desktop above it); Mac information lives in a volume's desktop",
                path.display()
            );
        };
        self.session.check_writable(&iv)?;
        must_exist(&iv.path(), path)?;
        let o = self.session.register_before_changing(&iv)?;
        // Letters and names change single flags of those the object has; a label its bits.
        let flags = (info.flags.is_some() || info.label.is_some()).then(|| {
            let flags = info.flags.map_or(o.flags, |change| change.apply(o.flags));
            info.label
                .map_or(flags, |label| finder::with_label(flags, label))
        });
        // The resource file says the same (a rebuild reads it; a comment longer than its 199
        // bytes stays whole in the desktop). Written first, with the user's own rights: where
        // the kernel refuses it (another's file in a sticky folder), the desktop keeps what it
        // had (review F8). Through the object's folder pinned from the root, never through a
        // link (docs/security.md, "dt's path races"); the pinned folder stays open while its
        // path is used.
        let pinned = if iv.components.is_empty() {
            None
        } else {
            Some(
                at::pin_in_volume(iv.volume.root(), &iv.components)
                    .with_context(|| format!("cannot write resource file of {}", iv.shown()))?,
            )
        };
        let rsrc_path = pinned
            .as_ref()
            .map_or_else(|| iv.rsrc_path(), |p| p.rsrc_path());
        at::race_pause("set-placed");
        // Errors name the resource file as the user knows it, not the pinned folder's
        // /proc/self/fd path.
        let shown_rsrc = iv.rsrc_path();
        let as_shown = |e: deskd_volume::VolumeError| match e {
            deskd_volume::VolumeError::Io { error, .. } => deskd_volume::VolumeError::Io {
                path: shown_rsrc.clone(),
                error,
            },
            other => other,
        };
        let previous = rsrc::read_header(&rsrc_path).map_err(as_shown)?;
        let mut header = previous
            .clone()
            .unwrap_or_else(|| rsrc::ResourceHeader::new(o.id, o.type_code, o.creator, 0));
        header.id = o.id;
        if let Some(t) = type_code {
            header.type_code = t;
        }
        if let Some(c) = creator {
            header.creator = c;
        }
        if let Some(f) = flags {
            header.finder_flags = f;
        }
        if let Some(text) = comment {
            header.comment = text.as_bytes().to_vec();
        }
        // The error names the file already.
        rsrc::write_header(&rsrc_path, &header)
            .map_err(as_shown)
            .context("cannot write resource file")?;
        // The record is as private as its object (its comment must not be readable where the
        // object is not). Another user's record in a shared folder keeps its mode: its owner's.
        if let Some(p) = &pinned {
            match record_follows_object(&iv, p) {
                Err(e)
                    if e.root_cause()
                        .downcast_ref::<std::io::Error>()
                        .and_then(|e| e.raw_os_error())
                        .is_some_and(|n| n == libc::EPERM || n == libc::EACCES) => {}
                other => other
                    .with_context(|| format!("cannot set the mode of {}", shown_rsrc.display()))?,
            }
        }
        // What the server refuses, the resource file does not keep either (best effort: the
        // refusal is the error reported).
        let undo = |header: &rsrc::ResourceHeader| {
            let _ = rsrc::write_header(&rsrc_path, header);
        };
        if type_code.is_some() || creator.is_some() || flags.is_some() {
            if let Err(e) = self.session.call(&iv, |vol| Request::SetInfo {
                vol,
                id: o.id,
                type_code,
                creator,
                flags,
            }) {
                if let Some(previous) = &previous {
                    undo(previous);
                }
                return Err(e);
            }
        }
        if let Some(text) = comment {
            let text = text.as_bytes().to_vec();
            if let Err(e) = self.session.call(&iv, |vol| {
                if text.is_empty() {
                    Request::CommentRemove { vol, id: o.id }
                } else {
                    Request::CommentSet {
                        vol,
                        id: o.id,
                        text,
                    }
                }
            }) {
                header.comment = previous.map(|p| p.comment).unwrap_or_default();
                undo(&header);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `dt find DIR PATTERN`: the server's name search, kept to what lies below DIR.
    fn find(&mut self, dir: &Path, pattern: &str, mode: FindMode, json: bool) -> Result<()> {
        let Place::Inside(iv) = self.session.place(dir)? else {
            bail!(
                "{}: not in a deskd volume (no .Desktop above it); use find(1) outside volumes",
                dir.display()
            );
        };
        if !fs::metadata(iv.path()).map(|m| m.is_dir()).unwrap_or(false) {
            bail!("{}: not a directory", dir.display());
        }
        let mut below = iv.rel();
        if !below.is_empty() {
            below.push(b'/');
        }
        let root = iv.volume.root().as_os_str().as_bytes().to_vec();
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut after_id = 0;
        loop {
            let page = 5000;
            let hits = match self.session.call(&iv, |vol| Request::Find {
                vol,
                pattern: pattern.to_string(),
                mode,
                limit: page,
                after_id,
            })? {
                Response::Objects(hits) => hits,
                other => bail!("unexpected reply {other:?}"),
            };
            for o in &hits {
                if o.path.as_deref().unwrap_or_default().starts_with(&below) {
                    write_match(&mut out, json, &root, o)?;
                }
            }
            match hits.last() {
                Some(last) if hits.len() as u32 == page => after_id = last.id,
                _ => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    fn mkdir(&mut self, path: &Path, parents: bool, mode: Option<&mode::ModeSpec>) -> Result<()> {
        let place = self.session.place(path)?;
        let target = match &place {
            Place::Outside(abs) => abs.clone(),
            Place::Inside(iv) => {
                self.session.check_writable(iv)?;
                iv.path()
            }
        };
        at::race_pause("mkdir-placed");
        // As mkdir(1) -m: from a=rwx, the umask only for symbolic clauses naming no class.
        let new_mode = mode.map(|spec| spec.apply(0o777, true, mode::umask()));
        let cannot = || format!("cannot create directory {}", quote(path));
        // The folder resolved once: in a volume from the root, never through a link (with -p
        // each missing folder made with mkdirat in the one before); outside by the name given
        // (docs/security.md, "dt's path races").
        let pinned = match &place {
            Place::Outside(_) => {
                if parents {
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent).with_context(cannot)?;
                    }
                }
                at::pin(&target)
            }
            // The volume root itself (there already).
            Place::Inside(iv) if iv.components.is_empty() => at::pin(&target),
            Place::Inside(iv) => {
                if parents {
                    make_folders_in_volume(iv.volume.root(), &iv.components)
                        .with_context(cannot)?;
                }
                at::pin_in_volume(iv.volume.root(), &iv.components)
            }
        }
        .with_context(cannot)?;
        let (dir, name) = (pinned.dir(), pinned.name());
        // mkdir -p -m leaves a directory that was there as it was, as mkdir(1) does.
        // (A link to one counts, as there: nothing is made or changed through it.)
        let made = !(parents
            && rustix::fs::statat(dir, name, rustix::fs::AtFlags::empty())
                .is_ok_and(|st| at::is_dir(&st)));
        // Made with no more than its final permission bits (the umask may take some), so the
        // directory is never open to others before its mode is set below. Made, and its mode
        // set, relative to its folder opened once: the mode goes to the directory made, never
        // through a name its folder's owner swapped for a symlink meanwhile (docs/security.md,
        // "dt's path races").
        match rustix::fs::mkdirat(
            dir,
            name,
            rustix::fs::Mode::from_raw_mode(new_mode.unwrap_or(0o777) & 0o777),
        ) {
            Err(e) if parents && !made && e == rustix::io::Errno::EXIST => Ok(()),
            other => other,
        }
        .map_err(std::io::Error::from)
        .with_context(cannot)?;
        at::race_pause("mkdir-made");
        if let (Some(new), true) = (new_mode, made) {
            let cannot = || format!("cannot set the mode of {}", quote(path));
            // Opened as itself (never through a link), without needing any permission on it.
            let made = at::open_path_at(dir, name, false).with_context(cannot)?;
            // What was made is this user's directory: a link, or a directory of anybody else,
            // put in its place is not given the mode.
            let st = rustix::fs::fstat(&made)
                .map_err(std::io::Error::from)
                .with_context(cannot)?;
            if !at::is_dir(&st) || st.st_uid != rustix::process::geteuid().as_raw() {
                return Err(at::replaced()).with_context(cannot);
            }
            fs::set_permissions(at::fd_path(made.as_fd()), fs::Permissions::from_mode(new))
                .with_context(cannot)?;
            if let Place::Inside(_) = &place {
                precreate_record(dir, name, new);
            }
        }
        if let Place::Inside(iv) = &place {
            // Every directory on the way gets its ID and resource file.
            for depth in 1..=iv.components.len() {
                self.session
                    .register(&iv.with_components(iv.components[..depth].to_vec()), true)?;
            }
            at::race_pause("mkdir-registered");
            if let (Some(new), true) = (new_mode, made) {
                follow_records(iv, true, Change::Mode(new))?;
            }
        }
        Ok(())
    }

    fn touch(&mut self, path: &Path, no_create: bool) -> Result<()> {
        let place = self.session.place(path)?;
        let abs = match &place {
            Place::Outside(abs) => abs.clone(),
            Place::Inside(iv) => {
                self.session.check_writable(iv)?;
                iv.path()
            }
        };
        // Its folder resolved once (in a volume from the root, never through a link): the
        // times set or the file made are there (docs/security.md, "dt's path races").
        let pinned = match &place {
            Place::Inside(iv) if !iv.components.is_empty() => {
                at::pin_in_volume(iv.volume.root(), &iv.components)
            }
            _ => at::pin(&abs),
        };
        let pinned = match pinned {
            // No folder, no file: `-c` makes none, as touch(1).
            Err(_) if no_create => return Ok(()),
            other => other.with_context(|| format!("cannot touch {}", path.display()))?,
        };
        at::race_pause("touch-placed");
        let abs = pinned.path();
        if exists(&abs) {
            set_times(&abs, None).with_context(|| format!("cannot touch {}", path.display()))?;
        } else if no_create {
            return Ok(());
        } else {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&abs)
                .with_context(|| format!("cannot touch {}", path.display()))?;
        }
        if let Place::Inside(iv) = place {
            self.session.register(&iv, true)?;
        }
        Ok(())
    }

    fn rm(&mut self, path: &Path, how: RmHow) -> Result<()> {
        let RmHow {
            recursive, force, ..
        } = how;
        let place = self.session.place(path)?;
        let abs = place.abs_unless_root(path, "refusing to remove a volume root")?;
        // Its folder resolved once, to an open directory (in a volume pinned from the root
        // without following a link): what is looked at, asked about and removed is there,
        // whatever the folder's owner does to the names meanwhile (docs/security.md, "dt's
        // path races").
        let pinned = match &place {
            Place::Inside(iv) => at::pin_in_volume(iv.volume.root(), &iv.components),
            Place::Outside(_) => at::pin(&abs),
        };
        let pinned = match pinned {
            Ok(p) => p,
            Err(_) if force => return Ok(()),
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", quote(path))),
        };
        at::race_pause("rm-placed");
        let abs = pinned.path();
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(_) if force => return Ok(()),
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", quote(path))),
        };
        if meta.is_dir() && !recursive {
            bail!("cannot remove {}: is a directory (use -r)", quote(path));
        }
        if let Place::Inside(iv) = &place {
            self.session.check_writable(iv)?;
        }
        if how.interactive && meta.is_dir() {
            return self.rm_asking(path, &pinned, matches!(place, Place::Inside(_)), how);
        }
        if how.interactive
            && !interact::ask(&format!("remove {} {}", what_it_is(&meta), quote(path)))
        {
            return Ok(());
        }
        // What -v reports, listed before it goes: a tree's entries after their contents, as
        // rm -r removes them (deskd's own names are not reported).
        let removed = if how.verbose {
            removal_order(&abs, path, matches!(place, Place::Inside(_)))
        } else {
            Vec::new()
        };
        at::remove_at(pinned.dir(), pinned.name())
            .with_context(|| format!("cannot remove {}", quote(path)))?;
        for (shown, dir) in &removed {
            let what = if *dir { "removed directory" } else { "removed" };
            interact::tell(&format!("{what} {}", quote(shown)));
        }
        if let Place::Inside(iv) = place {
            if let Ok(rsrc_dir) = at::walk_dir_at(pinned.dir(), OsStr::new(rsrc::RSRC_DIR)) {
                let _ =
                    rustix::fs::unlinkat(&rsrc_dir, pinned.name(), rustix::fs::AtFlags::empty());
            }
            self.record_removed(&iv, path, recursive)?;
        }
        Ok(())
    }

    /// `rm -ri` of directory `path` (pinned at `pinned`), as rm(1) asks: whether to descend into it
    /// (not asked when it is empty), then about each entry (in name order), then whether to
    /// remove the directory itself, which must be empty by then.
    ///
    /// Walked by descriptors, as rm(1) walks with fts: its folder is opened once, each
    /// directory is opened (never through a symlink) and checked to be what was looked at
    /// before it is entered, and kept open across the questions; every entry is removed
    /// relative to it. A folder's owner who swaps a name for a symlink while root reads a
    /// question turns nothing against another file (docs/security.md, "dt's path races").
    fn rm_asking(
        &mut self,
        path: &Path,
        pinned: &at::Pinned,
        in_volume: bool,
        how: RmHow,
    ) -> Result<()> {
        let iv = if in_volume {
            match self.session.place(path)? {
                Place::Inside(iv) => Some(iv),
                Place::Outside(_) => None,
            }
        } else {
            None
        };
        self.rm_at_asking(pinned.dir(), pinned.name(), path, iv.as_ref(), how)
    }

    /// [`Self::rm_asking`] of `name` in the directory open at `parent` (shown as `path`;
    /// in a volume at `iv`).
    fn rm_at_asking(
        &mut self,
        parent: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        iv: Option<&InVolume>,
        how: RmHow,
    ) -> Result<()> {
        let cannot = || format!("cannot remove {}", quote(path));
        let st = at::lstat_at(parent, name).with_context(cannot)?;
        if let Some(iv) = iv {
            self.session.check_writable(iv)?;
        }
        if !at::is_dir(&st) {
            if !interact::ask(&format!("remove {} {}", what_it_is_stat(&st), quote(path))) {
                return Ok(());
            }
            rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::empty())
                .map_err(std::io::Error::from)
                .with_context(cannot)?;
            if how.verbose {
                interact::tell(&format!("removed {}", quote(path)));
            }
            return self.forget_removed(parent, name, path, iv, false);
        }
        let dir = at::open_dir_checked(parent, name, &st).with_context(cannot)?;
        let listed = |dir: std::os::fd::BorrowedFd<'_>| -> Result<Vec<std::ffi::OsString>> {
            let mut names =
                at::names(dir).with_context(|| format!("cannot read directory {}", quote(path)))?;
            names.retain(|n| !(iv.is_some() && deskd_volume::is_protected(n.as_bytes())));
            Ok(names)
        };
        let rsrc_empty = |dir: std::os::fd::BorrowedFd<'_>| -> bool {
            match at::open_dir_at(dir, OsStr::new(rsrc::RSRC_DIR)) {
                Ok(r) => at::names(r.as_fd()).is_ok_and(|n| n.is_empty()),
                Err(_) => true,
            }
        };
        let names = listed(dir.as_fd())?;
        if !names.is_empty() || !rsrc_empty(dir.as_fd()) {
            if !interact::ask(&format!("descend into directory {}", quote(path))) {
                return Ok(());
            }
            for entry in names {
                // Each entry as an operand of its own: asked about, removed, reported.
                let child = iv.map(|iv| iv.child(entry.as_bytes()));
                if let Err(e) =
                    self.rm_at_asking(dir.as_fd(), &entry, &path.join(&entry), child.as_ref(), how)
                {
                    eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                    self.failed = true;
                }
            }
        }
        if !interact::ask(&format!("remove directory {}", quote(path))) {
            return Ok(());
        }
        if !listed(dir.as_fd())?.is_empty() || (iv.is_some() && !rsrc_empty(dir.as_fd())) {
            bail!("cannot remove {}: directory not empty", quote(path));
        }
        if iv.is_some() {
            match rustix::fs::unlinkat(
                &dir,
                OsStr::new(rsrc::RSRC_DIR),
                rustix::fs::AtFlags::REMOVEDIR,
            ) {
                Err(e) if e != rustix::io::Errno::NOENT => {
                    return Err(std::io::Error::from(e)).with_context(cannot)
                }
                _ => {}
            }
        }
        // Still the directory that was emptied: a directory put in its place is not removed.
        if !at::same(&at::lstat_at(parent, name).with_context(cannot)?, &st) {
            return Err(at::replaced()).with_context(cannot);
        }
        rustix::fs::unlinkat(parent, name, rustix::fs::AtFlags::REMOVEDIR)
            .map_err(std::io::Error::from)
            .with_context(cannot)?;
        if how.verbose {
            interact::tell(&format!("removed directory {}", quote(path)));
        }
        self.forget_removed(parent, name, path, iv, true)
    }

    /// After `name` in the directory open at `parent` was removed: its resource file (in the
    /// same directory's `.rsrc`, opened without following a link) goes, and deskd forgets it.
    fn forget_removed(
        &mut self,
        parent: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        iv: Option<&InVolume>,
        recursive: bool,
    ) -> Result<()> {
        let Some(iv) = iv else {
            return Ok(());
        };
        if let Ok(rsrc_dir) = at::walk_dir_at(parent, OsStr::new(rsrc::RSRC_DIR)) {
            let _ = rustix::fs::unlinkat(&rsrc_dir, name, rustix::fs::AtFlags::empty());
        }
        self.record_removed(iv, path, recursive)
    }

    /// Tell the server that `iv` (shown as `path`) was removed from disk.
    fn record_removed(&mut self, iv: &InVolume, path: &Path, recursive: bool) -> Result<()> {
        let rel = iv.rel();
        self.session
            .call(iv, |vol| Request::DeletePath {
                vol,
                path: rel,
                recursive,
            })
            .with_context(|| {
                format!(
                    "{} was removed but the desktop was not updated; run deskd rebuild",
                    path.display()
                )
            })?;
        Ok(())
    }

    fn rmdir(&mut self, path: &Path) -> Result<()> {
        match self.session.place(path)? {
            Place::Outside(abs) => {
                fs::remove_dir(&abs).with_context(|| format!("cannot remove {}", path.display()))
            }
            Place::Inside(iv) => {
                if iv.components.is_empty() {
                    bail!("{}: refusing to remove a volume root", path.display());
                }
                let cannot = || format!("cannot remove {}", path.display());
                // Its folder pinned from the volume root without following a link, the
                // directory opened and checked to be what was looked at: what is emptied and
                // removed is there (docs/security.md, "dt's path races").
                let pinned =
                    at::pin_in_volume(iv.volume.root(), &iv.components).with_context(cannot)?;
                at::race_pause("rmdir-placed");
                let st = at::lstat_at(pinned.dir(), pinned.name()).with_context(cannot)?;
                if !at::is_dir(&st) {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR))
                        .with_context(cannot);
                }
                let dir =
                    at::open_dir_checked(pinned.dir(), pinned.name(), &st).with_context(cannot)?;
                // The directory's own .rsrc holds only its entries' records: empty with them.
                let entries = at::names(dir.as_fd()).with_context(cannot)?;
                if entries.iter().any(|n| n != rsrc::RSRC_DIR) {
                    bail!("cannot remove {}: directory not empty", path.display());
                }
                self.session.check_writable(&iv)?;
                match at::remove_at(dir.as_fd(), OsStr::new(rsrc::RSRC_DIR)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| {
                            format!("cannot remove {}", iv.path().join(rsrc::RSRC_DIR).display())
                        })
                    }
                    _ => {}
                }
                rustix::fs::unlinkat(pinned.dir(), pinned.name(), rustix::fs::AtFlags::REMOVEDIR)
                    .map_err(std::io::Error::from)
                    .with_context(cannot)?;
                if let Ok(rsrc_dir) = at::walk_dir_at(pinned.dir(), OsStr::new(rsrc::RSRC_DIR)) {
                    let _ = rustix::fs::unlinkat(
                        &rsrc_dir,
                        pinned.name(),
                        rustix::fs::AtFlags::empty(),
                    );
                }
                let rel = iv.rel();
                self.session.call(&iv, |vol| Request::DeletePath {
                    vol,
                    path: rel,
                    recursive: true,
                })?;
                Ok(())
            }
        }
    }

    /// `dt mv` of one source to `dest` (the final name); `false` when it was left where it is
    /// (`-n`, or `-i` answered no).
    fn mv(&mut self, src: &Path, dest: &Path, replace: Replace) -> Result<bool> {
        let from = self.session.place(src)?;
        let to = self.session.place(dest)?;
        let from_abs = from.abs_unless_root(src, "cannot move a volume root")?;
        // A missing source is named before the destination is judged, as mv(1) does: `dt mv
        // GONE VOL/` gets here with the volume root as `dest` (nothing of GONE's name is in
        // it, so it could have been what a cut-short move made), and must say GONE is missing,
        // not that a root cannot be replaced. A root is never what a move made, so no resuming
        // onto one.
        let to_abs = to.abs_unless_root(dest, "cannot replace a volume root");
        if let Err(e) = fs::symlink_metadata(&from_abs) {
            if e.kind() == std::io::ErrorKind::NotFound {
                if let Ok(to_abs) = &to_abs {
                    if self.resume_move(&from, &to, to_abs)? {
                        return Ok(true);
                    }
                }
            }
            must_exist(&from_abs, src).map_err(|e| anyhow!("cannot move {e}"))?;
        }
        let to_abs = to_abs?;
        // Both folders resolved once, to open directories (in a volume without following a
        // link on the way): whatever their owners do to the names from here on, the move
        // happens where it was checked (docs/security.md, "dt's path races").
        let pin = |place: &Place, abs: &Path| match place {
            Place::Inside(iv) => at::pin_in_volume(iv.volume.root(), &iv.components),
            Place::Outside(_) => at::pin(abs),
        };
        let from_pin = pin(&from, &from_abs)
            .map_err(|e| anyhow!("cannot move {}: {}", quote(src), interact::io_text(&e)))?;
        let to_pin = pin(&to, &to_abs).map_err(|e| {
            anyhow!(
                "cannot move {} to {}: {}",
                quote(src),
                quote(dest),
                interact::io_text(&e)
            )
        })?;
        let (named_from, named_to) = (from_abs, to_abs);
        let (from_abs, to_abs) = (from_pin.path(), to_pin.path());
        let same_file = match (
            fs::symlink_metadata(&from_abs),
            fs::symlink_metadata(&to_abs),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if named_from == named_to || same_file {
            // As mv(1): a name, or a hard link, onto itself moves nothing and is an error.
            bail!("{} and {} are the same file", quote(src), quote(dest));
        }
        if named_to.starts_with(&named_from) {
            bail!("cannot move {} into itself", quote(src));
        }
        if let Ok(existing) = fs::symlink_metadata(&to_abs) {
            // As mv(1): a target is replaced only by its own kind, and a directory only when
            // empty (in a volume, its `.rsrc` of no entries does not count).
            let src_dir = fs::symlink_metadata(&from_abs).is_ok_and(|m| m.is_dir());
            if src_dir && !existing.is_dir() {
                bail!(
                    "cannot overwrite non-directory {} with directory {}",
                    quote(dest),
                    quote(src)
                );
            }
            if !src_dir && existing.is_dir() {
                bail!(
                    "cannot overwrite directory {} with non-directory",
                    quote(dest)
                );
            }
            if existing.is_dir() && !dir_is_empty(&to_abs, matches!(to, Place::Inside(_)))? {
                bail!(
                    "cannot move {} to {}: directory not empty",
                    quote(src),
                    quote(dest)
                );
            }
            match replace {
                Replace::Always => {}
                Replace::Never => return Ok(false),
                Replace::Ask => {
                    if !interact::ask(&format!("overwrite {}", quote(dest))) {
                        return Ok(false);
                    }
                }
            }
        }
        for p in [&from, &to] {
            if let Place::Inside(iv) = p {
                self.session.check_writable(iv)?;
            }
        }
        at::race_pause("mv-placed");
        match (from, to) {
            (Place::Outside(_), Place::Outside(_)) => move_plain(&from_abs, &to_abs),
            (Place::Inside(a), Place::Inside(b)) if a.same_volume(&b) => {
                self.mv_within(&a, &b, &from_pin, &to_pin)
            }
            (from, to) => self.mv_across(&from, &to, &from_pin, &to_pin),
        }?;
        Ok(true)
    }

    /// Inside one volume: rename on disk, move the resource file, tell deskd; IDs stay.
    /// An object at the target is replaced, as rename(2) does; the server retires its ID.
    /// The disk is worked on through `from_pin` and `to_pin`, the objects' folders pinned.
    fn mv_within(
        &mut self,
        a: &InVolume,
        b: &InVolume,
        from_pin: &at::Pinned,
        to_pin: &at::Pinned,
    ) -> Result<()> {
        let (from_abs, to_abs) = (from_pin.path(), to_pin.path());
        // An empty directory being replaced may hold its empty `.rsrc`, which rename(2) would
        // count as an entry.
        if fs::symlink_metadata(&to_abs).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_dir(to_abs.join(rsrc::RSRC_DIR));
        }
        let hint = self.session.lookup(a)?.map(|o| o.id);
        // Before anything moves: a link (or a file) in place of either folder's .rsrc is
        // refused, so no resource file is renamed, removed or taken through it (review 2,
        // finding 3: a user's `.rsrc -> /etc` made root's `dt mv` move or delete /etc's file
        // of the same name).
        from_pin.check_rsrc()?;
        to_pin.check_rsrc()?;
        let from_rsrc = from_pin.rsrc_path();
        let has_rsrc = fs::symlink_metadata(&from_rsrc).is_ok();
        if has_rsrc {
            rsrc::make_rsrc_dir(&to_pin.rsrc_path())?;
        }
        // Through the destination's `.rsrc` as it is now (made just above when it was not).
        let to_rsrc = to_pin.rsrc_path();
        match fs::rename(&from_abs, &to_abs) {
            Ok(()) => {
                if has_rsrc {
                    fs::rename(&from_rsrc, &to_rsrc).with_context(|| {
                        format!("cannot move resource file {}", from_rsrc.display())
                    })?;
                } else {
                    // The replaced object's record must not lend its ID to the moved one.
                    let _ = fs::remove_file(&to_rsrc);
                }
                let (from_rel, to_rel) = (a.rel(), b.rel());
                self.session
                    .call(a, |vol| Request::RenamePath {
                        vol,
                        from: from_rel,
                        to: to_rel,
                        replace: true,
                        hint,
                    })
                    .with_context(|| {
                        format!(
                            "{} was moved but the desktop was not updated; run deskd rebuild",
                            a.shown()
                        )
                    })?;
                self.session.register(b, true)?;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Another file system inside the volume: copy, then re-register every object
                // with the ID from its resource file.
                let replaced = exists(&to_abs);
                if replaced {
                    remove_any(&to_abs)?;
                    let to_rel = b.rel();
                    self.session.call(b, |vol| Request::DeletePath {
                        vol,
                        path: to_rel,
                        recursive: true,
                    })?;
                }
                copy_tree(&from_abs, &to_abs)?;
                rsrc::copy_file(&from_rsrc, &to_rsrc)?;
                remove_any(&from_abs)?;
                let _ = fs::remove_file(&from_rsrc);
                let from_rel = a.rel();
                self.session.call(a, |vol| Request::DeletePath {
                    vol,
                    path: from_rel,
                    recursive: true,
                })?;
                self.register_tree(b, true)
            }
            Err(e) => Err(anyhow!("cannot move {} to {}: {e}", a.shown(), b.shown())),
        }
    }

    /// Between volumes, or into/out of one: the data moves, the arriving objects get new IDs,
    /// the leaving ones are removed from their desktop. The order keeps a `dt` killed at any
    /// point from leaving a copy with the source volume's IDs (docs/dt.md, "A move between
    /// volumes cut short"): the top object's record (type, creator, fork; no ID) is made; the
    /// data lands carrying no ID; the source goes; the destination gives the new IDs; last the
    /// source's desktop and record forget it.
    fn mv_across(
        &mut self,
        from: &Place,
        to: &Place,
        from_pin: &at::Pinned,
        to_pin: &at::Pinned,
    ) -> Result<()> {
        let (from_abs, to_abs) = (&from_pin.path(), &to_pin.path());
        // No resource file goes through a link in place of a `.rsrc` (review 2, finding 3).
        from_pin.check_rsrc()?;
        to_pin.check_rsrc()?;
        if exists(to_abs) {
            if let Place::Inside(b) = to {
                let rel = b.rel();
                remove_any(to_abs)?;
                let _ = fs::remove_file(to_pin.rsrc_path());
                self.session.call(b, |vol| Request::DeletePath {
                    vol,
                    path: rel,
                    recursive: true,
                })?;
            } else {
                remove_any(to_abs)?;
            }
        }
        let Place::Inside(b) = to else {
            // Leaving for outside every volume: the resource files go along as they are.
            if fs::rename(from_abs, to_abs).is_err() {
                copy_tree(from_abs, to_abs).with_context(|| {
                    format!("cannot copy {} to {}", from_abs.display(), to_abs.display())
                })?;
                remove_any(from_abs)
                    .with_context(|| format!("cannot remove {}", from_abs.display()))?;
            }
            if let Place::Inside(a) = from {
                self.forget_moved(a)?;
            }
            return Ok(());
        };
        // Type, creator and fork travel; the ID is the destination's to give. The record goes
        // first, made by this user: it is there from the moment the data is.
        let record = match from {
            Place::Inside(_) => copy_record_cleared(&from_pin.rsrc_path(), &to_pin.rsrc_path())?,
            Place::Outside(_) => false,
        };
        test_pause("record");
        let renamed = match land_without_ids(from_abs, to_abs) {
            Ok(renamed) => renamed,
            Err(e) => {
                if record {
                    let _ = fs::remove_file(to_pin.rsrc_path());
                }
                // The source may have lost its carriers' IDs on the way: its desktop still has
                // them, and registering it again writes them back.
                if let Place::Inside(a) = from {
                    if exists(from_abs) {
                        let _ = self.register_tree(a, true);
                    }
                }
                return Err(e);
            }
        };
        test_pause("landed");
        if !renamed {
            // First out of the way in one step, so a source found under its own name is
            // always whole (docs/dt.md: what a move cut short leaves).
            let aside = set_aside_name(from_abs);
            fs::rename(from_abs, &aside)
                .with_context(|| format!("cannot remove {}", from_abs.display()))?;
            test_pause("aside");
            remove_any(&aside).with_context(|| format!("cannot remove {}", aside.display()))?;
        }
        test_pause("source-removed");
        self.finish_arrival(from, b)
    }

    /// The end of a move into volume `b` once the data is there and the source gone: new IDs in
    /// `b` for everything that arrived, then the source's desktop and record forget it.
    fn finish_arrival(&mut self, from: &Place, b: &InVolume) -> Result<()> {
        self.register_tree(b, false).with_context(|| {
            format!(
                "{} arrived but is not registered yet; run the same dt mv again",
                b.shown()
            )
        })?;
        test_pause("registered");
        if let Place::Inside(a) = from {
            self.forget_moved(a)?;
        }
        Ok(())
    }

    /// A source that left volume `a`: out of its desktop, then its resource file (the last
    /// trace, which tells an unfinished move: see [`Dt::resume_move`]).
    fn forget_moved(&mut self, a: &InVolume) -> Result<()> {
        let rel = a.rel();
        self.session
            .call(a, |vol| Request::DeletePath {
                vol,
                path: rel,
                recursive: true,
            })
            .with_context(|| {
                format!(
                    "{} was moved but its desktop was not updated; run deskd rebuild",
                    a.shown()
                )
            })?;
        test_pause("forgotten");
        // Through its folder pinned from the root, never through a link.
        if let Ok(pinned) = at::pin_in_volume(a.volume.root(), &a.components) {
            if let Ok(rsrc_dir) = at::walk_dir_at(pinned.dir(), OsStr::new(rsrc::RSRC_DIR)) {
                let _ =
                    rustix::fs::unlinkat(&rsrc_dir, pinned.name(), rustix::fs::AtFlags::empty());
            }
        }
        Ok(())
    }

    /// `dt mv` of a source that is gone, to a target in another volume that is there, while
    /// the source's resource file (or what was left of it, put aside to be removed: see
    /// [`set_aside_name`]) is still in its volume: a move between volumes cut short after its
    /// data arrived. Finish it (register the arrival with new IDs, forget the
    /// source); `Ok(false)` when this is not such a move.
    fn resume_move(&mut self, from: &Place, to: &Place, to_abs: &Path) -> Result<bool> {
        let (Place::Inside(a), Place::Inside(b)) = (from, to) else {
            return Ok(false);
        };
        let left_record = fs::symlink_metadata(a.rsrc_path()).is_ok_and(|m| m.is_file());
        let aside = set_aside_name(&a.path());
        let left_aside = fs::symlink_metadata(&aside).is_ok();
        if a.same_volume(b) || !(left_record || left_aside) || !exists(to_abs) {
            return Ok(false);
        }
        self.session.check_writable(a)?;
        self.session.check_writable(b)?;
        eprintln!(
            "dt: {} is gone and {} is there: finishing the move that was cut short",
            a.shown(),
            b.shown()
        );
        if !exists(&b.rsrc_path()) {
            copy_record_cleared(&a.rsrc_path(), &b.rsrc_path())?;
        }
        if left_aside {
            // What was left of the source while it was being removed (a repair of its volume
            // may have registered it there).
            remove_any(&aside).with_context(|| format!("cannot remove {}", aside.display()))?;
            let mut beside = a.components.clone();
            if let (Some(last), Some(name)) = (beside.last_mut(), aside.file_name()) {
                *last = name.as_bytes().to_vec();
            }
            let rel = a.with_components(beside).rel();
            self.session.call(a, |vol| Request::DeletePath {
                vol,
                path: rel,
                recursive: true,
            })?;
        }
        self.finish_arrival(from, b)?;
        Ok(true)
    }

    /// Register `iv` and everything below it; with `keep_ids` the IDs in the resource files
    /// (or xattrs) are kept where free, otherwise every object gets a new ID.
    fn register_tree(&mut self, iv: &InVolume, keep_ids: bool) -> Result<()> {
        // A spinner with a count on a terminal (indicatif draws nothing otherwise).
        let progress = indicatif::ProgressBar::new_spinner()
            .with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} objects")
                    .expect("valid template"),
            )
            .with_message(format!("registering {}", iv.shown()));
        progress.enable_steady_tick(std::time::Duration::from_millis(200));
        let result = self.register_tree_with(iv, keep_ids, &progress);
        progress.finish_and_clear();
        result
    }

    /// Walk the tree depth first (parents before children) and register it in pipelined
    /// chunks.
    fn register_tree_with(
        &mut self,
        top: &InVolume,
        keep_ids: bool,
        progress: &indicatif::ProgressBar,
    ) -> Result<()> {
        /// Objects per pipelined round trip.
        const CHUNK: usize = 512;
        let mut stack = vec![top.clone()];
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut registered = 0u64;
        let mut done = || {
            progress.inc(1);
            registered += 1;
            if test_pausing() {
                test_pause(&format!("registered:{registered}"));
            }
        };
        while let Some(iv) = stack.pop() {
            // Through the object's folder pinned from the volume root, never through a link
            // (docs/security.md, "dt's path races").
            let pinned = if iv.components.is_empty() {
                None
            } else {
                Some(
                    at::pin_in_volume(iv.volume.root(), &iv.components)
                        .with_context(|| format!("cannot register {}", iv.shown()))?,
                )
            };
            let (rsrc_path, path) = match &pinned {
                Some(p) => (p.rsrc_path(), p.path()),
                None => (iv.rsrc_path(), iv.path()),
            };
            let mut header = rsrc::read_header(&rsrc_path).ok().flatten();
            if let Some(h) = header.as_mut().filter(|h| !keep_ids && h.id != 0) {
                // Fresh IDs: forget IDs recorded for another volume (or for the original of a
                // copy) before the server is asked, so no later look at this file takes one.
                h.id = 0;
                rsrc::write_header(&rsrc_path, h)?;
            }
            if fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                let mut entries: Vec<_> = fs::read_dir(&path)?.filter_map(|e| e.ok()).collect();
                // Reversed onto the stack, so they come off in name order.
                entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
                for e in entries {
                    let name = e.file_name();
                    if !deskd_volume::is_protected(name.as_bytes()) {
                        stack.push(iv.child(name.as_bytes()));
                    }
                }
            }
            chunk.push((iv, header));
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                self.session.register_many(full, keep_ids, &mut done)?;
            }
        }
        self.session.register_many(chunk, keep_ids, &mut done)
    }

    /// `dt ls`: as ls(1), the operands that are not directories (all of them with `-d`) first,
    /// as one list, then what each directory holds. An operand that cannot be reached makes
    /// the exit status 2, as ls(1)'s "serious trouble".
    fn ls_operands(&mut self, paths: &[PathBuf], how: LsHow) -> Result<()> {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for p in paths {
            let reached = self.session.place(p).and_then(|place| {
                let abs = match &place {
                    Place::Outside(a) => a.clone(),
                    Place::Inside(iv) => iv.path(),
                };
                let meta = fs::symlink_metadata(&abs).map_err(|e| {
                    anyhow!("cannot access {}: {}", quote(p), interact::io_text(&e))
                })?;
                Ok((place, abs, meta))
            });
            // As ls(1): a link given as an operand is listed as the directory it names,
            // unless -l or -d asks about the link itself.
            let listed_as_dir = |abs: &Path, meta: &fs::Metadata| {
                !how.directory
                    && (meta.is_dir()
                        || (!how.long
                            && meta.file_type().is_symlink()
                            && fs::metadata(abs).is_ok_and(|m| m.is_dir())))
            };
            match reached {
                Ok((place, abs, meta)) if listed_as_dir(&abs, &meta) => {
                    dirs.push((p.clone(), place, abs))
                }
                Ok((place, abs, _)) => files.push((p.clone(), place, abs)),
                Err(e) => {
                    eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                    self.serious = true;
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        how.order(&mut files, |f| f.2.clone());
        how.order(&mut dirs, |d| d.2.clone());
        let mut names = listing::Names::default();
        let now = chrono::Utc::now().timestamp();
        if !files.is_empty() {
            let mut rows = Vec::new();
            let mut plain = Vec::new();
            for (p, place, abs) in &files {
                let shown = p.as_os_str().as_bytes();
                if how.long {
                    let ids = self.ids_of_dir(place, true);
                    let name = abs.file_name().map(|n| n.as_bytes()).unwrap_or_default();
                    let info = ids.as_ref().and_then(|m| m.get(name));
                    rows.push(long_row(abs, shown, info, how.human, &mut names, now)?);
                } else {
                    plain.push(shown.to_vec());
                }
            }
            let mut out = std::io::stdout().lock();
            listing::write_rows(&mut out, &rows)?;
            for name in plain {
                out.write_all(&name)?;
                out.write_all(b"\n")?;
            }
        }
        let header = paths.len() > 1 || how.recursive;
        for (i, (p, place, abs)) in dirs.iter().enumerate() {
            if i > 0 || !files.is_empty() {
                writeln!(std::io::stdout())?;
            }
            if let Err(e) = self.ls_dir(p, place, abs, how, header, &mut names, now) {
                eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                self.failed = true;
            }
        }
        Ok(())
    }

    /// What directory `path` holds (with `-R`, and below).
    #[allow(clippy::too_many_arguments)]
    fn ls_dir(
        &mut self,
        path: &Path,
        place: &Place,
        abs: &Path,
        how: LsHow,
        header: bool,
        names: &mut listing::Names,
        now: i64,
    ) -> Result<()> {
        let mut entries: Vec<Vec<u8>> = fs::read_dir(abs)
            .with_context(|| format!("cannot open directory {}", quote(path)))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .filter(|n| !deskd_volume::is_protected(n) && (how.all || !n.starts_with(b".")))
            .collect();
        if how.dots {
            entries.extend([b".".to_vec(), b"..".to_vec()]);
        }
        entries.sort();
        how.order(&mut entries, |name| abs.join(OsStr::from_bytes(name)));
        let mut out = std::io::stdout().lock();
        if header {
            out.write_all(path.as_os_str().as_bytes())?;
            out.write_all(b":\n")?;
        }
        if how.long {
            let ids = self.ids_of_dir(place, false);
            let mut rows = Vec::with_capacity(entries.len());
            let mut blocks = 0;
            for name in &entries {
                let child = abs.join(OsStr::from_bytes(name));
                let info = ids.as_ref().and_then(|m| m.get(name));
                blocks += fs::symlink_metadata(&child).map_or(0, |m| m.blocks());
                rows.push(long_row(&child, name, info, how.human, names, now)?);
            }
            writeln!(out, "{}", listing::total_line(blocks, how.human))?;
            listing::write_rows(&mut out, &rows)?;
        } else {
            for name in &entries {
                out.write_all(name)?;
                out.write_all(b"\n")?;
            }
        }
        drop(out);
        if how.recursive {
            for name in &entries {
                let child_abs = abs.join(OsStr::from_bytes(name));
                if name == b"." || name == b".." {
                    continue;
                }
                if !fs::symlink_metadata(&child_abs).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                let child = path.join(OsStr::from_bytes(name));
                // An error (a reader that went away) ends the listing like any other.
                writeln!(std::io::stdout())?;
                let child_place = match place {
                    Place::Outside(_) => Place::Outside(child_abs.clone()),
                    Place::Inside(iv) => Place::Inside(iv.child(name)),
                };
                if let Err(e) = self.ls_dir(&child, &child_place, &child_abs, how, true, names, now)
                {
                    eprintln!("dt: {}", at::readable(&format!("{e:#}")));
                    self.failed = true;
                }
            }
        }
        Ok(())
    }

    /// The registered entries of a directory (or of a file's parent), by name. `None` outside
    /// volumes or when deskd cannot answer (the listing still works, without IDs).
    fn ids_of_dir(
        &mut self,
        place: &Place,
        parent_of: bool,
    ) -> Option<HashMap<Vec<u8>, ObjectInfo>> {
        let Place::Inside(iv) = place else {
            return None;
        };
        let dir = if parent_of {
            iv.with_components(iv.components[..iv.components.len().saturating_sub(1)].to_vec())
        } else {
            iv.clone()
        };
        let result = (|| -> Result<HashMap<Vec<u8>, ObjectInfo>> {
            let Some(d) = self.session.lookup(&dir)? else {
                return Ok(HashMap::new());
            };
            match self
                .session
                .call(&dir, |vol| Request::Children { vol, dir: d.id })?
            {
                Response::Objects(children) => {
                    Ok(children.into_iter().map(|o| (o.name.clone(), o)).collect())
                }
                other => Err(anyhow!("unexpected reply {other:?}")),
            }
        })();
        match result {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!(
                    "dt: {} (listing without IDs)",
                    at::readable(&format!("{e:#}"))
                );
                None
            }
        }
    }

    fn info(&mut self, path: &Path, json: bool) -> Result<()> {
        let Place::Inside(iv) = self.session.place(path)? else {
            bail!(
                "{}: not in a deskd volume (no .Desktop above it)",
                path.display()
            );
        };
        must_exist(&iv.path(), path)?;
        let o = match self.session.registered_if_read_only(&iv)? {
            Some(o) => o,
            None => self.session.register(&iv, true)?,
        };
        let full = iv.path();
        // A comment the server will not give (the volume root has no record of its own to
        // hold one) is shown as none: the other fields are what was asked for.
        let comment = match self
            .session
            .call(&iv, |vol| Request::CommentGet { vol, id: o.id })
        {
            Ok(Response::Comment(c)) => c,
            Ok(other) => bail!("unexpected reply {other:?}"),
            Err(_) => None,
        };
        let meta = fs::symlink_metadata(&full)
            .with_context(|| format!("cannot access {}", quote(path)))?;
        let created = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        if json {
            let v = serde_json::json!({
                "path": display_bytes(full.as_os_str().as_bytes()),
                "volume": display_bytes(iv.volume.root().as_os_str().as_bytes()),
                "id": o.id,
                "parent_id": o.parent,
                "name": display_bytes(&o.name),
                "kind": o.kind.as_str(),
                "type": fourcc(&o.type_code),
                "creator": fourcc(&o.creator),
                "flags": o.flags,
                "flag_names": finder::flag_names(o.flags),
                "label": finder::label_name(o.flags),
                "comment": comment.as_deref().map(display_bytes),
                "modified": meta.mtime(),
                "changed": meta.ctime(),
                "accessed": meta.atime(),
                "created": created,
            });
            println!("{v}");
        } else {
            println!("path:      {}", display_bytes(full.as_os_str().as_bytes()));
            println!("id:        {}", o.id);
            println!("parent_id: {}", o.parent);
            println!("name:      {}", display_bytes(&o.name));
            println!("kind:      {}", o.kind.as_str());
            // A folder has no type or creator (all zero bytes): shown as "-", as in ls -l.
            println!("type:      {}", code_or_dash(&o.type_code));
            println!("creator:   {}", code_or_dash(&o.creator));
            let names = finder::flag_names(o.flags);
            let names = if names.is_empty() {
                "-".to_string()
            } else {
                names.join(" ")
            };
            println!("flags:     {names} (0x{:04x})", o.flags);
            println!("label:     {}", finder::label_name(o.flags));
            println!(
                "comment:   {}",
                comment.as_deref().map(display_bytes).unwrap_or_default()
            );
            println!("modified:  {}", ctime_string(meta.mtime()));
            println!("changed:   {}", ctime_string(meta.ctime()));
            println!("accessed:  {}", ctime_string(meta.atime()));
            if let Some(t) = created {
                println!("created:   {}", ctime_string(t));
            }
        }
        Ok(())
    }

    fn resolve(&mut self, volume: &Path, id: u32) -> Result<()> {
        let Place::Inside(iv) = self.session.place(volume)? else {
            bail!("{}: not a deskd volume (no .Desktop)", volume.display());
        };
        let root = iv.with_components(Vec::new());
        match self
            .session
            .call(&root, |vol| Request::Resolve { vol, id })?
        {
            Response::Object(o) => {
                let mut full = root.volume.root().as_os_str().as_bytes().to_vec();
                if let Some(p) = o.path.filter(|p| !p.is_empty()) {
                    full.push(b'/');
                    full.extend_from_slice(&p);
                }
                let mut out = std::io::stdout().lock();
                out.write_all(&full)?;
                out.write_all(b"\n")?;
                Ok(())
            }
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }
}

/// What `dt chmod`/`chown`/`chgrp` do to one object: its absolute path, the path to show
/// (as given, for messages and `-v`), its metadata.
type ChangeFn<'a> = dyn FnMut(&Path, &Path, &fs::Metadata) -> Result<Change> + 'a;

/// Whether `dt mv` replaces an existing target: always (mv(1)'s default, `-f`), after asking
/// (`-i`) or never (`-n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Always,
    Ask,
    Never,
}

/// The options of `dt cp` besides what [`CopyMode`] keeps.
#[derive(Debug, Clone, Copy)]
struct CpHow {
    recursive: bool,
    /// What to do with an existing file: overwrite it, ask (`-i`), leave it (`-n`).
    replace: Replace,
    keep_ids: bool,
    verbose: bool,
}

/// `dt mkdir -p` in a volume: every folder on the way to `components` (all but the last) that
/// is missing is made with `mkdirat` in the one before, each opened from the volume root
/// without following a link (docs/security.md, "dt's path races").
fn make_folders_in_volume(root: &Path, components: &[Vec<u8>]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let Some((_, folders)) = components.split_last() else {
        return Ok(());
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty())?;
    for folder in folders {
        let name = std::ffi::OsStr::from_bytes(folder);
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
            Err(e) if e == rustix::io::Errno::EXIST => {}
            other => other?,
        }
        dir = match at::walk_dir_at(dir.as_fd(), name) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(std::io::Error::other(format!(
                    "{}: a symbolic link on the way (not followed)",
                    String::from_utf8_lossy(folder)
                )))
            }
            other => other?,
        };
    }
    Ok(())
}

/// The options of `dt rm`.
#[derive(Debug, Clone, Copy)]
struct RmHow {
    recursive: bool,
    force: bool,
    interactive: bool,
    verbose: bool,
}

/// The options of `dt ls`.
#[derive(Debug, Clone, Copy)]
struct LsHow {
    long: bool,
    /// `-a`: `.` and `..` as well.
    dots: bool,
    all: bool,
    recursive: bool,
    directory: bool,
    human: bool,
    sort: LsSort,
    reverse: bool,
}

/// The order of `dt ls`: by name (byte order), newest first (`-t`) or largest first (`-S`),
/// ties by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LsSort {
    Name,
    Time,
    Size,
}

impl LsHow {
    /// Put `items`, already in name order, in the order asked for; `path` gives each one's
    /// place on disk (its own metadata: a link is sorted as the link).
    fn order<T>(&self, items: &mut [T], path: impl Fn(&T) -> PathBuf) {
        let key = |item: &T| {
            let meta = fs::symlink_metadata(path(item)).ok();
            match self.sort {
                LsSort::Name => (0, 0),
                LsSort::Time => meta.map_or((0, 0), |m| (m.mtime(), m.mtime_nsec())),
                LsSort::Size => meta.map_or((0, 0), |m| (m.size() as i64, 0)),
            }
        };
        if self.sort != LsSort::Name {
            // Stable: equal keys stay in name order.
            items.sort_by_cached_key(|item| std::cmp::Reverse(key(item)));
        }
        if self.reverse {
            items.reverse();
        }
    }
}

/// What `dt set` changes.
struct MacInfo {
    type_code: Option<[u8; 4]>,
    creator: Option<[u8; 4]>,
    flags: Option<finder::FlagsChange>,
    label: Option<u8>,
    comment: Option<String>,
}

/// What `dt chmod`/`chown`/`chgrp` did to an object, for its resource records to follow.
#[derive(Debug, Clone, Copy)]
enum Change {
    Mode(u32),
    Owner(Option<u32>, Option<u32>),
}

/// Make an object's resource records follow its new mode or owner: its resource file (mode:
/// the read and write bits only; it is never executable or set-ID), and for a directory the
/// `.rsrc` directory that holds its entries' records (mode: the directory's). A link in either
/// place is left alone (dt never works through one).
fn follow_records(iv: &InVolume, is_dir: bool, change: Change) -> Result<()> {
    // Each opened (`O_PATH`) without following a link at any step below the object's folder,
    // and changed through its descriptor: a link put in the place of either between a check
    // and the change is never followed (docs/security.md, "dt's path races").
    let Some(name) = iv.components.last() else {
        // A volume root: its resource file is deskd's own at the root.
        return follow_records_by_path(iv, is_dir, change);
    };
    let Ok(folder) = at::pin_in_volume(iv.volume.root(), &iv.components) else {
        return Ok(());
    };
    let folder = folder.dir();
    let name = OsStr::from_bytes(name);
    let mut places = Vec::new();
    if let Ok(rsrc_dir) = at::walk_dir_at(folder, OsStr::new(rsrc::RSRC_DIR)) {
        if let Ok(st) = at::lstat_at(rsrc_dir.as_fd(), name) {
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                at::race_pause("records-looked-at");
                if let Ok(fd) = at::open_path_at(rsrc_dir.as_fd(), name, false) {
                    if rustix::fs::fstat(&fd).is_ok_and(|now| at::same(&now, &st)) {
                        places.push((fd, false, iv.rsrc_path()));
                    }
                }
            }
        }
    }
    if is_dir {
        if let Ok(object) = at::walk_dir_at(folder, name) {
            if let Ok(fd) = at::walk_dir_at(object.as_fd(), OsStr::new(rsrc::RSRC_DIR)) {
                places.push((fd, true, iv.path().join(rsrc::RSRC_DIR)));
            }
        }
    }
    for (fd, dir, place) in places {
        // Through the descriptor: /proc/self/fd/N leads to that very object.
        change_record(&at::fd_path(fd.as_fd()), dir, change, true)
            .with_context(|| format!("cannot change {}", place.display()))?;
    }
    Ok(())
}

/// Make the resource file of `name` (just made in the directory open at `dir`) before it is
/// registered, with no more permission for others than `mode` gives (the owner may always
/// read and write it): written by the registration, it is never open to others that the
/// mode keeps out, not even until [`follow_records`] sets its mode. Best effort: what cannot
/// be made here the registration makes.
fn precreate_record(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, mode: u32) {
    use rustix::fs::{Mode, OFlags};
    let rsrc_name = OsStr::new(rsrc::RSRC_DIR);
    let _ = rustix::fs::mkdirat(dir, rsrc_name, Mode::from_raw_mode(0o777));
    let Ok(rsrc_dir) = at::walk_dir_at(dir, rsrc_name) else {
        return;
    };
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let _ = rustix::fs::openat(
        &rsrc_dir,
        name,
        flags,
        Mode::from_raw_mode((mode & 0o066) | 0o600),
    );
}

/// Apply `change` to a record (`dir`: a `.rsrc` directory) at `path`: a file record never gets
/// execute bits. `through_fd`: `path` is a descriptor's /proc path, whose link leads to the
/// object itself; else the owner change does not follow a link.
fn change_record(path: &Path, dir: bool, change: Change, through_fd: bool) -> std::io::Result<()> {
    match change {
        Change::Mode(mode) => {
            let mode = if dir { mode } else { mode & 0o666 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
        }
        Change::Owner(uid, gid) if through_fd => std::os::unix::fs::chown(path, uid, gid),
        Change::Owner(uid, gid) => std::os::unix::fs::lchown(path, uid, gid),
    }
}

/// Give the record of `iv` (pinned at `pinned`) its object's read and write bits, by
/// `dt chmod`'s rule ([`follow_records`]): its Mac information (a Finder comment) is then as
/// private as the object.
fn record_follows_object(iv: &InVolume, pinned: &at::Pinned) -> Result<()> {
    let object = at::lstat_at(pinned.dir(), pinned.name())?;
    follow_records(iv, false, Change::Mode(object.st_mode & 0o7777))
}

/// [`follow_records`] for a volume root, whose places are deskd's own.
fn follow_records_by_path(iv: &InVolume, is_dir: bool, change: Change) -> Result<()> {
    let mut places = vec![(iv.rsrc_path(), false)];
    if is_dir {
        places.push((iv.path().join(rsrc::RSRC_DIR), true));
    }
    for (place, dir) in places {
        let Ok(meta) = fs::symlink_metadata(&place) else {
            continue;
        };
        if meta.file_type().is_symlink() || meta.is_dir() != dir {
            continue;
        }
        change_record(&place, dir, change, false)
            .with_context(|| format!("cannot change {}", place.display()))?;
    }
    Ok(())
}

/// How rm(1) -i names an object in its question ([`what_it_is`] for a stat).
fn what_it_is_stat(st: &rustix::fs::Stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFREG if st.st_size == 0 => "regular empty file",
        libc::S_IFREG => "regular file",
        _ => "special file",
    }
}

/// Why a type or creator code of `dt set` is refused (clap prints it after the option's
/// name).
#[derive(Debug)]
struct CodeError(String);

// By hand rather than with thiserror: a binary of deskd-cli, which has no other use for it.
impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: a type or creator code is exactly 4 characters (bytes)",
            self.0
        )
    }
}

impl std::error::Error for CodeError {}

/// A value parser whose refusals show the verb's usage line, as clap's own usage errors do
/// (an invalid mode or flag is a usage error: exit 2, with the usage).
#[derive(Clone)]
struct WithUsage<P>(P);

impl<P: clap::builder::TypedValueParser> clap::builder::TypedValueParser for WithUsage<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        use clap::error::{ContextKind, ContextValue};
        self.0.parse_ref(cmd, arg, value).map_err(|mut e| {
            let usage = cmd.clone().render_usage();
            e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
            e
        })
    }
}

/// A parser whose accepted words shell completions offer (help and parsing are `P`'s: a label
/// may also be a number, which completion need not list).
#[derive(Clone)]
struct Suggesting<P>(P, &'static [&'static str]);

impl<P: clap::builder::TypedValueParser> clap::builder::TypedValueParser for Suggesting<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        self.0.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.1
                .iter()
                .map(|&name| clap::builder::PossibleValue::new(name)),
        ))
    }
}

/// How a mode argument is parsed.
type ParseMode = fn(&str) -> Result<mode::ModeSpec, mode::ModeError>;

/// [`mode::parse_mode`] for clap, usage shown on refusal.
fn mode_arg() -> WithUsage<ParseMode> {
    WithUsage(mode::parse_mode)
}

/// A type or creator code: exactly 4 bytes.
fn parse_code(s: &str) -> Result<[u8; 4], CodeError> {
    s.as_bytes()
        .try_into()
        .map_err(|_| CodeError(s.to_string()))
}

/// [`deskd_cli::walk::dir_is_empty`], the error naming the directory.
fn dir_is_empty(dir: &Path, in_volume: bool) -> Result<bool> {
    deskd_cli::walk::dir_is_empty(dir, in_volume)
        .with_context(|| format!("cannot read directory {}", quote(dir)))
}

fn move_plain(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            if exists(to) {
                remove_any(to)?;
            }
            copy_tree(from, to)?;
            remove_any(from).map_err(Into::into)
        }
        Err(e) => Err(anyhow!(
            "cannot move {} to {}: {e}",
            from.display(),
            to.display()
        )),
    }
}

/// Put the data of `from` at `to`, in another volume, carrying no ID of where it came from.
/// On one file system a rename, once the tree's resource files and mirrors hold no ID (the
/// source keeps its IDs in its desktop until the end, and a repair gives them back to its
/// files); else, or when they cannot all be cleared, a copy whose resource files are written
/// without IDs (and which takes no xattrs). `true` for a rename (the source is gone), `false`
/// for a copy (the source is still there).
fn land_without_ids(from: &Path, to: &Path) -> Result<bool> {
    let same_fs = match (
        fs::symlink_metadata(from),
        fs::metadata(to.parent().unwrap_or(Path::new("/"))),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    };
    if same_fs && may_rename(from, to) && clear_tree(from).is_ok() {
        test_pause("cleared");
        if fs::rename(from, to).is_ok() {
            return Ok(true);
        }
    }
    copy_tree_with(from, to, CopyMode::ARRIVING)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(false)
}

/// Whether this user may rename `from` to `to` as far as permissions go (write and search on
/// both parents, and write on a directory that changes parent, for its `..`): checked before
/// the source's carriers are cleared for a rename, so a rename refused for want of permission
/// leaves them alone. (The rename itself still decides; this only keeps the common refusal
/// from costing the source its carriers.)
fn may_rename(from: &Path, to: &Path) -> bool {
    let allowed = |p: &Path| {
        use rustix::fs::{Access, AtFlags};
        let wx = Access::WRITE_OK | Access::EXEC_OK;
        rustix::fs::accessat(rustix::fs::CWD, p, wx, AtFlags::EACCESS).is_ok()
    };
    let parent = |p: &Path| p.parent().unwrap_or(Path::new("/")).to_path_buf();
    let is_dir = fs::symlink_metadata(from).is_ok_and(|m| m.is_dir());
    allowed(&parent(from)) && allowed(&parent(to)) && (!is_dir || allowed(from))
}

/// Where a source copied into another volume is put aside while it is removed: a hidden name
/// beside it, made from its name (short enough for any name).
fn set_aside_name(source: &Path) -> PathBuf {
    // FNV-1a: stable from one dt to the next, which must find what an earlier one left.
    let hash = source
        .file_name()
        .map_or(&[][..], |n| n.as_bytes())
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    source.with_file_name(format!(".dt-mv-{hash:016x}"))
}

/// The step `DESKD_TEST_MV_PAUSE_AT` names, if any (a test hook).
#[cfg(feature = "test-hooks")]
fn pause_step() -> Option<&'static str> {
    static STEP: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    STEP.get_or_init(|| std::env::var("DESKD_TEST_MV_PAUSE_AT").ok())
        .as_deref()
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn pause_step() -> Option<&'static str> {
    None
}

fn test_pausing() -> bool {
    pause_step().is_some()
}

/// Test hook: with `DESKD_TEST_MV_PAUSE_AT=<step>`, dt says `dt: test pause at <step>` on
/// stderr when it reaches that step of a move into another volume (`record`, `cleared`,
/// `landed`, `aside`, `source-removed`, `registered:<n>` after n objects, `registered`,
/// `forgotten`) or of a copy (`copied`, then `registered:<n>`)
/// and waits there to be killed, so the tests kill it at exactly that point.
fn test_pause(step: &str) {
    if pause_step() == Some(step) {
        eprintln!("dt: test pause at {step}");
        loop {
            std::thread::park();
        }
    }
}

/// One row of `dt ls -l` for the object at `abs`, shown as `shown`.
fn long_row(
    abs: &Path,
    shown: &[u8],
    info: Option<&ObjectInfo>,
    human: bool,
    names: &mut listing::Names,
    now: i64,
) -> Result<listing::Row> {
    let meta = fs::symlink_metadata(abs)
        .with_context(|| format!("cannot access {}", display_bytes(shown)))?;
    let mut row = listing::Row::new(&meta, human, names, now);
    if let Some(o) = info {
        row.id = o.id.to_string();
        row.type_code = code_or_dash(&o.type_code);
        row.creator = code_or_dash(&o.creator);
    }
    row.name = shown.to_vec();
    if meta.file_type().is_symlink() {
        if let Ok(target) = fs::read_link(abs) {
            row.name.extend_from_slice(b" -> ");
            row.name.extend_from_slice(target.as_os_str().as_bytes());
        }
    }
    Ok(row)
}

/// A type or creator code, `-` when it is all zero bytes (a folder's).
fn code_or_dash(code: &[u8; 4]) -> String {
    if *code == [0; 4] {
        "-".to_string()
    } else {
        fourcc(code)
    }
}
