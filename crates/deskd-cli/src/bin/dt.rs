//! `dt`: POSIX file verbs that keep IDs, resource files, the xattr mirror and the desktop
//! consistent. Outside any volume each verb behaves like the plain command.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use deskd_cli::connection::ConnectionArgs;
use deskd_cli::fresh_ids::{clear_tree, copy_record_cleared};
use deskd_cli::fsops::{copy_tree, copy_tree_with, keep_owner, remove_any, set_times, CopyMode};
use deskd_cli::mode;
use deskd_cli::output::{display_bytes, fourcc, write_match, FindArgs};
use deskd_cli::target::{InVolume, Place, Session};
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
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Create files or update their times.
    Touch {
        /// Do not create missing files.
        #[arg(short = 'c', long = "no-create")]
        no_create: bool,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Move or rename; inside one volume every ID stays.
    Mv {
        /// Replace an existing target (its ID is lost). Without -f an existing target is an error.
        #[arg(short, long)]
        force: bool,
        /// Sources, then the target.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
    },
    /// Remove files (and with -r directories).
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', short_alias = 'R', long)]
        recursive: bool,
        /// Ignore missing files.
        #[arg(short, long)]
        force: bool,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Remove empty directories.
    Rmdir {
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List directories; -l adds ID, type and creator.
    Ls {
        /// Long format: ID, type, creator, mode, size, name.
        #[arg(short = 'l')]
        long: bool,
        /// Show names that start with '.' (deskd's own names never show).
        #[arg(short = 'a')]
        all: bool,
        /// List subdirectories recursively.
        #[arg(short = 'R')]
        recursive: bool,
        /// Directories or files to list (default: the current directory).
        paths: Vec<PathBuf>,
    },
    /// Show ID, parent ID, kind, type and creator (registering unseen objects).
    Info {
        /// One JSON object per path per line.
        #[arg(long)]
        json: bool,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
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
        /// Do not overwrite an existing file.
        #[arg(short = 'n', long = "no-clobber")]
        no_clobber: bool,
        /// Restore: keep the IDs the copied resource files carry wherever
        /// the volume has them free, so aliases to the files work again; an ID in use (a tree
        /// restored twice) gets a new one. For copies of this volume's own files, such as a
        /// file-level backup of it.
        #[arg(long)]
        keep_ids: bool,
        /// Sources, then the target (a directory when there are several sources).
        #[arg(required = true, num_args = 2..)]
        paths: Vec<PathBuf>,
    },
    /// Change modes (octal, or chmod's symbolic form: u+x, go-w, a=rX, ...). Resource files
    /// follow their objects.
    Chmod {
        /// Also everything below each directory (symbolic links are not followed).
        #[arg(short = 'R')]
        recursive: bool,
        /// The mode: 640, u+x,go-w, a=rX, ...
        mode: String,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Change owner (and group). Resource files follow their objects.
    Chown {
        /// Also everything below each directory (links themselves, never their targets).
        #[arg(short = 'R')]
        recursive: bool,
        /// USER, USER:GROUP, USER: (the user's login group) or :GROUP; names or numbers.
        owner: String,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Change group. Resource files follow their objects.
    Chgrp {
        /// Also everything below each directory (links themselves, never their targets).
        #[arg(short = 'R')]
        recursive: bool,
        /// The group, by name or number.
        group: String,
        /// Paths, inside a volume or not (outside one, dt acts like the plain command).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Set Mac file information: type, creator, Finder flags, comment (in the desktop and the
    /// resource file alike).
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)))]
    Set {
        /// Type code, 4 characters (e.g. TEXT, APPL); APPL registers the application.
        #[arg(short = 't', long = "type", group = "what", value_parser = parse_code)]
        type_code: Option<[u8; 4]>,
        /// Creator code, 4 characters (e.g. ttxt).
        #[arg(short = 'c', long, group = "what", value_parser = parse_code)]
        creator: Option<[u8; 4]>,
        /// Finder flags, decimal or 0x hex.
        #[arg(long, group = "what", value_parser = parse_flags)]
        flags: Option<u16>,
        /// Finder comment; "" removes it.
        #[arg(long, group = "what")]
        comment: Option<String>,
        /// Objects in a volume.
        #[arg(required = true)]
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

fn main() -> ExitCode {
    deskd_docgen::handle_generate(<Cli as clap::CommandFactory>::command);
    // `dt ls | head` ends quietly, as ls(1) does (only the listing verbs write to stdout).
    deskd_cli::output::end_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    let mut dt = Dt {
        session: Session::new(cli.connection.address()),
        failed: false,
    };
    if let Err(e) = dt.run(cli.command) {
        eprintln!("dt: {e:#}");
        return ExitCode::from(1);
    }
    if dt.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

struct Dt {
    session: Session,
    failed: bool,
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
                eprintln!("dt: {e:#}");
                self.failed = true;
            }
        }
    }

    fn run(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Mkdir { parents, paths } => self.each(&paths, |dt, p| dt.mkdir(p, parents)),
            Command::Touch { no_create, paths } => {
                self.each(&paths, |dt, p| dt.touch(p, no_create))
            }
            Command::Rm {
                recursive,
                force,
                paths,
            } => self.each(&paths, |dt, p| dt.rm(p, recursive, force)),
            Command::Rmdir { paths } => self.each(&paths, |dt, p| dt.rmdir(p)),
            Command::Mv { force, mut paths } => {
                let target = paths.pop().expect("clap requires two paths");
                let into_dir = fs::metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
                if paths.len() > 1 && !into_dir {
                    bail!("target {} is not a directory", target.display());
                }
                self.each(&paths, |dt, src| {
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
                    dt.mv(src, &dest, force)
                });
            }
            Command::Ls {
                long,
                all,
                recursive,
                paths,
            } => {
                let paths = if paths.is_empty() {
                    vec![PathBuf::from(".")]
                } else {
                    paths
                };
                let many = paths.len() > 1 || recursive;
                self.each(&paths, |dt, p| dt.ls(p, long, all, recursive, many));
            }
            Command::Info { json, paths } => self.each(&paths, |dt, p| dt.info(p, json)),
            Command::Resolve { volume, id } => self.resolve(&volume, id)?,
            Command::Cp {
                recursive,
                preserve,
                no_clobber,
                keep_ids,
                mut paths,
            } => {
                let target = paths.pop().expect("clap requires two paths");
                let into_dir = fs::metadata(&target).map(|m| m.is_dir()).unwrap_or(false);
                if paths.len() > 1 && !into_dir {
                    bail!("target {} is not a directory", target.display());
                }
                let how = CopyMode {
                    preserve,
                    umask: mode::umask(),
                    // Set per operand: only a copy arriving in a volume gets new IDs.
                    fresh_ids: false,
                };
                self.each(&paths, |dt, src| {
                    let dest = if into_dir {
                        target.join(name_of(src)?)
                    } else {
                        target.clone()
                    };
                    dt.cp(src, &dest, recursive, no_clobber, keep_ids, how)
                });
            }
            Command::Chmod {
                recursive,
                mode,
                paths,
            } => {
                let spec = mode::parse_mode(&mode).map_err(|e| anyhow!(e))?;
                let umask = mode::umask();
                self.each(&paths, |dt, p| {
                    dt.change(p, recursive, &mut |path, meta| {
                        let new = spec.apply(meta.mode(), meta.is_dir(), umask);
                        fs::set_permissions(path, fs::Permissions::from_mode(new))
                            .with_context(|| format!("cannot change mode of {}", path.display()))?;
                        Ok(Change::Mode(new))
                    })
                });
            }
            Command::Chown {
                recursive,
                owner,
                paths,
            } => {
                let (uid, gid) = mode::parse_owner(&owner).map_err(|e| anyhow!(e))?;
                self.each(&paths, |dt, p| dt.change_owner(p, recursive, uid, gid));
            }
            Command::Chgrp {
                recursive,
                group,
                paths,
            } => {
                let gid = mode::group_id(&group).map_err(|e| anyhow!(e))?;
                self.each(&paths, |dt, p| {
                    dt.change_owner(p, recursive, None, Some(gid))
                });
            }
            Command::Set {
                type_code,
                creator,
                flags,
                comment,
                paths,
            } => self.each(&paths, |dt, p| {
                dt.set(p, type_code, creator, flags, comment.as_deref())
            }),
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
    fn cp(
        &mut self,
        src: &Path,
        dest: &Path,
        recursive: bool,
        no_clobber: bool,
        keep_ids: bool,
        how: CopyMode,
    ) -> Result<()> {
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
        if meta.is_dir() && !recursive {
            bail!("cannot copy {}: is a directory (use -R)", src.display());
        }
        if meta.is_dir() && to_abs.starts_with(&from_abs) {
            bail!("cannot copy {} into itself", src.display());
        }
        if let Place::Inside(b) = &to {
            self.session.check_writable(b)?;
        }
        if let Ok(existing) = fs::symlink_metadata(&to_abs) {
            if meta.is_dir() || existing.is_dir() {
                bail!(
                    "cannot copy {} to {}: target exists (dt cp does not merge directories, nor put a file in a directory's place)",
                    src.display(),
                    dest.display()
                );
            }
            if no_clobber {
                return Ok(());
            }
            if existing.dev() == meta.dev() && existing.ino() == meta.ino() {
                bail!("{} and {} are the same file", src.display(), dest.display());
            }
            self.overwrite(&from_abs, &to_abs, &to, how)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
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
        copy_tree_with(&source, &to_abs, how)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
        test_pause("copied");
        if let Place::Inside(b) = &to {
            // The top object's record lives beside it, not in the copied tree. A tree from
            // outside any volume (a file-level backup of one) may have it beside it too.
            let top_record = match &from {
                Place::Inside(a) => Some(a.rsrc_path()),
                Place::Outside(a) => a.file_name().map(|name| {
                    a.parent()
                        .unwrap_or(Path::new("/"))
                        .join(rsrc::RSRC_DIR)
                        .join(name)
                }),
            };
            if let Some(record) = top_record.filter(|r| r.is_file()) {
                if keep_ids {
                    rsrc::make_rsrc_dir(&b.rsrc_path())?;
                    rsrc::copy_file(&record, &b.rsrc_path())?;
                } else {
                    copy_record_cleared(&record, &b.rsrc_path())?;
                }
            }
            // A copy is a new object (new IDs, Mac information kept), unless restoring.
            self.register_tree(b, keep_ids)?;
        }
        Ok(())
    }

    /// Overwrite an existing file's data in place, as cp(1) does: it stays the same object and
    /// keeps its ID and Mac information.
    fn overwrite(&mut self, from: &Path, to: &Path, to_place: &Place, how: CopyMode) -> Result<()> {
        let mut source = fs::OpenOptions::new().read(true).open(from)?;
        let mut open = fs::OpenOptions::new();
        open.write(true).truncate(true);
        if let Place::Inside(_) = to_place {
            // A link planted in a volume is not written through.
            open.custom_flags(libc::O_NOFOLLOW);
        }
        let mut dest = open.open(to)?;
        std::io::copy(&mut source, &mut dest)?;
        if how.preserve {
            let meta = source.metadata()?;
            keep_owner(to, &meta)?;
            dest.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            set_times(
                to,
                Some((
                    meta.atime(),
                    meta.atime_nsec(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                )),
            )?;
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
        f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<Change>,
    ) -> Result<()> {
        let place = self.session.place(path)?;
        let (abs, inside) = match place {
            Place::Outside(abs) => (abs, None),
            Place::Inside(iv) => {
                self.session.check_writable(&iv)?;
                (iv.path(), Some(iv))
            }
        };
        // The operand itself is followed if it is a link, as chmod(1) and chown(1) do.
        let meta =
            fs::metadata(&abs).with_context(|| format!("cannot access {}", path.display()))?;
        self.change_tree(&abs, inside.as_ref(), &meta, recursive, f)
    }

    fn change_tree(
        &mut self,
        abs: &Path,
        inside: Option<&InVolume>,
        meta: &fs::Metadata,
        recursive: bool,
        f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<Change>,
    ) -> Result<()> {
        let change = f(abs, meta)?;
        if let Some(iv) = inside {
            follow_records(iv, meta.is_dir(), change)?;
        }
        if !(recursive && meta.is_dir()) {
            return Ok(());
        }
        let mut entries: Vec<_> = fs::read_dir(abs)
            .with_context(|| format!("cannot read directory {}", abs.display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            // In a volume deskd's own names follow their objects instead of being walked.
            if inside.is_some() && deskd_volume::is_protected(name.as_bytes()) {
                continue;
            }
            let child = abs.join(&name);
            let child_meta = fs::symlink_metadata(&child)?;
            if child_meta.file_type().is_symlink() {
                // Links themselves: chmod(1) -R leaves them, chown(1) -R changes the link.
                if let Change::Owner(uid, gid) = change {
                    std::os::unix::fs::lchown(&child, uid, gid)
                        .with_context(|| format!("cannot change owner of {}", child.display()))?;
                }
                continue;
            }
            let child_iv = inside.map(|iv| iv.child(name.as_bytes()));
            // As chmod -R does: report an entry that fails and go on with the rest.
            if let Err(e) = self.change_tree(&child, child_iv.as_ref(), &child_meta, recursive, f) {
                eprintln!("dt: {e:#}");
                self.failed = true;
            }
        }
        Ok(())
    }

    fn change_owner(
        &mut self,
        path: &Path,
        recursive: bool,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.change(path, recursive, &mut |p, _| {
            std::os::unix::fs::chown(p, uid, gid)
                .with_context(|| format!("cannot change owner of {}", p.display()))?;
            Ok(Change::Owner(uid, gid))
        })
    }

    /// `dt set`: Mac information into the desktop and the resource file.
    fn set(
        &mut self,
        path: &Path,
        type_code: Option<[u8; 4]>,
        creator: Option<[u8; 4]>,
        flags: Option<u16>,
        comment: Option<&str>,
    ) -> Result<()> {
        let Place::Inside(iv) = self.session.place(path)? else {
            bail!(
                "{}: not in a deskd volume (no .Desktop above it); Mac information lives in a volume's desktop",
                path.display()
            );
        };
        self.session.check_writable(&iv)?;
        must_exist(&iv.path(), path)?;
        let o = self.session.register(&iv, true)?;
        if type_code.is_some() || creator.is_some() || flags.is_some() {
            self.session.call(&iv, |vol| Request::SetInfo {
                vol,
                id: o.id,
                type_code,
                creator,
                flags,
            })?;
        }
        if let Some(text) = comment {
            let text = text.as_bytes().to_vec();
            self.session.call(&iv, |vol| {
                if text.is_empty() {
                    Request::CommentRemove { vol, id: o.id }
                } else {
                    Request::CommentSet {
                        vol,
                        id: o.id,
                        text,
                    }
                }
            })?;
        }
        // The resource file says the same (a rebuild reads it; a comment longer than its 199
        // bytes stays whole in the desktop).
        let rsrc_path = iv.rsrc_path();
        let mut header = rsrc::read_header(&rsrc_path)?
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
        rsrc::write_header(&rsrc_path, &header).context("cannot write resource file")?;
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

    fn mkdir(&mut self, path: &Path, parents: bool) -> Result<()> {
        match self.session.place(path)? {
            Place::Outside(abs) => if parents {
                fs::create_dir_all(&abs)
            } else {
                fs::create_dir(&abs)
            }
            .with_context(|| format!("cannot create directory {}", path.display())),
            Place::Inside(iv) => {
                self.session.check_writable(&iv)?;
                let target = iv.path();
                if parents {
                    fs::create_dir_all(&target)
                } else {
                    fs::create_dir(&target)
                }
                .with_context(|| format!("cannot create directory {}", path.display()))?;
                // Every directory on the way gets its ID and resource file.
                for depth in 1..=iv.components.len() {
                    self.session
                        .register(&iv.with_components(iv.components[..depth].to_vec()), true)?;
                }
                Ok(())
            }
        }
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

    fn rm(&mut self, path: &Path, recursive: bool, force: bool) -> Result<()> {
        let place = self.session.place(path)?;
        let abs = place.abs_unless_root(path, "refusing to remove a volume root")?;
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(_) if force => return Ok(()),
            Err(e) => return Err(anyhow!("cannot remove {}: {e}", path.display())),
        };
        if meta.is_dir() && !recursive {
            bail!("cannot remove {}: is a directory (use -r)", path.display());
        }
        if let Place::Inside(iv) = &place {
            self.session.check_writable(iv)?;
        }
        remove_any(&abs).with_context(|| format!("cannot remove {}", path.display()))?;
        if let Place::Inside(iv) = place {
            let _ = fs::remove_file(iv.rsrc_path());
            let rel = iv.rel();
            self.session
                .call(&iv, |vol| Request::DeletePath {
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
        }
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
                let dir = iv.path();
                // The directory's own .rsrc holds only its entries' records: empty with them.
                let rsrc_dir = dir.join(rsrc::RSRC_DIR);
                let entries: Vec<_> = fs::read_dir(&dir)
                    .with_context(|| format!("cannot remove {}", path.display()))?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name() != rsrc::RSRC_DIR)
                    .collect();
                if !entries.is_empty() {
                    bail!("cannot remove {}: directory not empty", path.display());
                }
                self.session.check_writable(&iv)?;
                if rsrc_dir.exists() {
                    fs::remove_dir_all(&rsrc_dir)
                        .with_context(|| format!("cannot remove {}", rsrc_dir.display()))?;
                }
                fs::remove_dir(&dir)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                let _ = fs::remove_file(iv.rsrc_path());
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

    fn mv(&mut self, src: &Path, dest: &Path, force: bool) -> Result<()> {
        let from = self.session.place(src)?;
        let to = self.session.place(dest)?;
        let from_abs = from.abs_unless_root(src, "cannot move a volume root")?;
        let to_abs = to.abs_unless_root(dest, "cannot replace a volume root")?;
        if let Err(e) = fs::symlink_metadata(&from_abs) {
            if e.kind() == std::io::ErrorKind::NotFound && self.resume_move(&from, &to, &to_abs)? {
                return Ok(());
            }
            must_exist(&from_abs, src).map_err(|e| anyhow!("cannot move {e}"))?;
        }
        if from_abs == to_abs {
            return Ok(());
        }
        if exists(&to_abs) && !force {
            bail!(
                "cannot move {} to {}: target exists (use -f to replace it)",
                src.display(),
                dest.display()
            );
        }
        if to_abs.starts_with(&from_abs) {
            bail!("cannot move {} into itself", src.display());
        }
        for p in [&from, &to] {
            if let Place::Inside(iv) = p {
                self.session.check_writable(iv)?;
            }
        }
        match (from, to) {
            (Place::Outside(_), Place::Outside(_)) => move_plain(&from_abs, &to_abs),
            (Place::Inside(a), Place::Inside(b)) if a.same_volume(&b) => {
                self.mv_within(&a, &b, force)
            }
            (from, to) => self.mv_across(&from, &to, &from_abs, &to_abs, force),
        }
    }

    /// Inside one volume: rename on disk, move the resource file, tell deskd; IDs stay.
    fn mv_within(&mut self, a: &InVolume, b: &InVolume, force: bool) -> Result<()> {
        let (from_abs, to_abs) = (a.path(), b.path());
        let hint = self.session.lookup(a)?.map(|o| o.id);
        let (from_rsrc, to_rsrc) = (a.rsrc_path(), b.rsrc_path());
        let has_rsrc = fs::symlink_metadata(&from_rsrc).is_ok();
        if has_rsrc {
            // Before anything moves: a link in place of the destination's .rsrc is refused,
            // so the resource file is never renamed out of the volume.
            rsrc::make_rsrc_dir(&to_rsrc)?;
        }
        match fs::rename(&from_abs, &to_abs) {
            Ok(()) => {
                if has_rsrc {
                    fs::rename(&from_rsrc, &to_rsrc).with_context(|| {
                        format!("cannot move resource file {}", from_rsrc.display())
                    })?;
                }
                let (from_rel, to_rel) = (a.rel(), b.rel());
                self.session
                    .call(a, |vol| Request::RenamePath {
                        vol,
                        from: from_rel,
                        to: to_rel,
                        replace: force,
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
                if force && exists(&to_abs) {
                    remove_any(&to_abs)?;
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
        from_abs: &Path,
        to_abs: &Path,
        force: bool,
    ) -> Result<()> {
        if force && exists(to_abs) {
            if let Place::Inside(b) = to {
                let rel = b.rel();
                remove_any(to_abs)?;
                let _ = fs::remove_file(b.rsrc_path());
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
            Place::Inside(a) => copy_record_cleared(&a.rsrc_path(), &b.rsrc_path())?,
            Place::Outside(_) => false,
        };
        test_pause("record");
        let renamed = match land_without_ids(from_abs, to_abs) {
            Ok(renamed) => renamed,
            Err(e) => {
                if record {
                    let _ = fs::remove_file(b.rsrc_path());
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
        let _ = fs::remove_file(a.rsrc_path());
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
            let rsrc_path = iv.rsrc_path();
            let mut header = rsrc::read_header(&rsrc_path).ok().flatten();
            if let Some(h) = header.as_mut().filter(|h| !keep_ids && h.id != 0) {
                // Fresh IDs: forget IDs recorded for another volume (or for the original of a
                // copy) before the server is asked, so no later look at this file takes one.
                h.id = 0;
                rsrc::write_header(&rsrc_path, h)?;
            }
            let path = iv.path();
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

    fn ls(
        &mut self,
        path: &Path,
        long: bool,
        all: bool,
        recursive: bool,
        header: bool,
    ) -> Result<()> {
        let place = self.session.place(path)?;
        let abs = match &place {
            Place::Outside(a) => a.clone(),
            Place::Inside(iv) => iv.path(),
        };
        let meta = fs::symlink_metadata(&abs)
            .with_context(|| format!("cannot access {}", path.display()))?;
        let mut out = std::io::stdout().lock();
        if !meta.is_dir() {
            let ids = self.ids_of_dir(&place, true);
            let name = abs
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            print_entry(
                &mut out,
                long,
                &abs,
                &name,
                ids.as_ref().and_then(|m| m.get(&name)),
                path.as_os_str().as_bytes(),
            )?;
            return Ok(());
        }
        if header {
            out.write_all(path.as_os_str().as_bytes())?;
            out.write_all(b":\n")?;
        }
        let mut names: Vec<Vec<u8>> = fs::read_dir(&abs)
            .with_context(|| format!("cannot open directory {}", path.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .filter(|n| !deskd_volume::is_protected(n) && (all || !n.starts_with(b".")))
            .collect();
        names.sort();
        let ids = if long {
            self.ids_of_dir(&place, false)
        } else {
            None
        };
        for name in &names {
            let child = abs.join(OsStr::from_bytes(name));
            print_entry(
                &mut out,
                long,
                &child,
                name,
                ids.as_ref().and_then(|m| m.get(name)),
                name,
            )?;
        }
        drop(out);
        if recursive {
            for name in &names {
                let child = path.join(OsStr::from_bytes(name));
                if fs::symlink_metadata(abs.join(OsStr::from_bytes(name)))
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    // An error (a reader that went away) ends the listing like any other.
                    writeln!(std::io::stdout())?;
                    self.ls(&child, long, all, recursive, true)?;
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
                eprintln!("dt: {e:#} (listing without IDs)");
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
            });
            println!("{v}");
        } else {
            println!("path:      {}", display_bytes(full.as_os_str().as_bytes()));
            println!("id:        {}", o.id);
            println!("parent_id: {}", o.parent);
            println!("name:      {}", display_bytes(&o.name));
            println!("kind:      {}", o.kind.as_str());
            println!("type:      {}", fourcc(&o.type_code));
            println!("creator:   {}", fourcc(&o.creator));
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
        match change {
            Change::Mode(mode) => {
                let mode = if dir { mode } else { mode & 0o666 };
                fs::set_permissions(&place, fs::Permissions::from_mode(mode))
            }
            Change::Owner(uid, gid) => std::os::unix::fs::lchown(&place, uid, gid),
        }
        .with_context(|| format!("cannot change {}", place.display()))?;
    }
    Ok(())
}

/// Why an option value of `dt set` is refused (clap prints it after the option's name).
#[derive(Debug)]
enum ValueError {
    Code(String),
    Flags(String),
}

// By hand rather than with thiserror: a binary of deskd-cli, which has no other use for it.
impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueError::Code(s) => write!(
                f,
                "{s:?}: a type or creator code is exactly 4 characters (bytes)"
            ),
            ValueError::Flags(s) => write!(
                f,
                "{s:?}: Finder flags are a 16-bit number (decimal or 0x hex)"
            ),
        }
    }
}

impl std::error::Error for ValueError {}

/// A type or creator code: exactly 4 bytes.
fn parse_code(s: &str) -> Result<[u8; 4], ValueError> {
    s.as_bytes()
        .try_into()
        .map_err(|_| ValueError::Code(s.to_string()))
}

/// Finder flags: decimal or `0x` hex, 16 bits.
fn parse_flags(s: &str) -> Result<u16, ValueError> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| ValueError::Flags(s.to_string()))
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

fn mode_string(m: &fs::Metadata) -> String {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = m.permissions().mode();
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn print_entry(
    out: &mut impl Write,
    long: bool,
    path: &Path,
    _name: &[u8],
    info: Option<&ObjectInfo>,
    shown: &[u8],
) -> Result<()> {
    if long {
        let meta = fs::symlink_metadata(path)?;
        let (id, t, c) = match info {
            Some(o) => {
                // Directories have no type or creator (all zero bytes): shown as "-".
                let code = |c: &[u8; 4]| {
                    if *c == [0; 4] {
                        "-".to_string()
                    } else {
                        fourcc(c)
                    }
                };
                (o.id.to_string(), code(&o.type_code), code(&o.creator))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        write!(
            out,
            "{id:>10} {t:<4} {c:<4} {} {:>12} ",
            mode_string(&meta),
            meta.size()
        )?;
    }
    out.write_all(shown)?;
    out.write_all(b"\n")?;
    Ok(())
}
