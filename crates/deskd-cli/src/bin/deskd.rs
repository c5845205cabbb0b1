//! `deskd`: the desktop server (`deskd serve`) and its control verbs.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use deskd_cli::cnid_listener;
use deskd_cli::connection::verbs::{BeforeVerb, ClientOptions, ServeOptions, VerbOptionError};
use deskd_cli::connection::ConnectionArgs;
use deskd_cli::output::{ctime_string, display_bytes, write_match, FindArgs};
use deskd_client::{Client, Request, Response};
use deskd_proto::{Endpoint, ErrorCode};
use deskd_server::{ConfigFile, Server};

#[derive(Parser)]
#[command(
    name = "deskd",
    version,
    about = "Desktop database server for file-server volumes"
)]
struct Cli {
    /// `deskd --socket S VERB`: accepted for the verbs that take the option (hidden here; each
    /// verb's `--help` lists its own).
    #[command(flatten)]
    before_verb: BeforeVerb,
    #[command(subcommand)]
    command: Command,
}

/// The walk and output options of `deskd rebuild` and `deskd restore`.
#[derive(clap::Args)]
struct WalkArgs {
    /// Also print each repair (the `deskd rebuild -s` lines) while repairing.
    #[arg(short, long)]
    verbose: bool,
    /// Differences (or repairs) and the summary as JSON lines.
    #[arg(long)]
    json: bool,
    /// Walker threads (default: 8 per CPU, from 8 to 64; they mostly wait on the disk).
    #[arg(long)]
    threads: Option<usize>,
}

impl WalkArgs {
    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(deskd_rebuild::default_threads)
    }
}

/// Overrides of the checks of a volume root (docs/security.md, "Formats and nested volumes").
#[derive(clap::Args, Clone, Copy)]
struct RootArgs {
    /// Go on although the volume's root is inside or around another volume's root (a folder
    /// above or below holds a .Desktop): its objects then have IDs in both desktops.
    #[arg(long)]
    nested: bool,
    /// Go on although every user may write the volume's root (mode o+w, like /tmp), and so
    /// plant files where deskd keeps its own.
    #[arg(long)]
    world_writable: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the desktops of the given volumes (and those in the config file). SIGTERM or
    /// SIGINT stop it cleanly (every desktop flushed and marked clean); SIGHUP re-reads the
    /// configuration (timers, new volumes) and the token files and flushes every desktop (the
    /// TCP and HTTP addresses, backup_dir and [netatalk] change at the next start). With the
    /// configuration file: `[server] http_listen` serves /metrics and the admin page
    /// (docs/admin-http.md), a `[netatalk]` table answers Netatalk afpd's CNID protocol
    /// (docs/netatalk.md), and per volume (or in `[defaults]`) `watch = "auto"` keeps IDs
    /// through changes made outside deskd (Samba, `mv`: docs/deskd.md, "Live tracking"),
    /// `backend = "postgresql://…"` keeps the desktop in PostgreSQL.
    // The doc comments of clap's arguments are `--help` text, printed as written: its
    // `[server]` and `<path>` are not rustdoc links or HTML.
    #[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
    Serve {
        /// TOML configuration ([server], [defaults], [volume."<path>"], [netatalk]).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also listen on TCP at HOST:PORT (clients must hold the token of --token-file;
        /// overrides `listen` in [server]).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        own: ServeOptions,
        #[command(flatten)]
        roots: RootArgs,
        /// Serve every volume read-only: those given here and those of the configuration file,
        /// as `read_only = true` would (also after a reload). A volume on a read-only file
        /// system is served read-only without it.
        #[arg(long)]
        read_only: bool,
        /// Volume roots to serve with the [defaults] settings, besides the [volume."<path>"]
        /// tables of --config (a reload re-reads the file and keeps these).
        volumes: Vec<PathBuf>,
    },
    /// Show each volume: path, objects, last flush, clean flag, freeze, memory, and its active
    /// users (the connected clients: uid, pid, program, since, TCP peer; others' only to the
    /// volume's owner and root); then the server's memory (RssAnon, RssFile, VmHWM, mappings).
    Status {
        /// Only this volume (default: every volume the server serves).
        #[arg(long)]
        volume: Option<PathBuf>,
        /// One JSON object per volume per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Print the server's figures in the Prometheus text format (for node_exporter's textfile
    /// collector); a user other than root sees what `deskd status` shows it: its own
    /// requests, and everyone's on the volumes it owns.
    Metrics {
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Commit and write the WAL into .Desktop on every volume (or one).
    Flush {
        /// Only this volume (default: every volume the server serves).
        #[arg(long)]
        volume: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Flush, then keep .Desktop byte-stable for SECONDS (default freeze_default).
    Freeze {
        /// Only this volume (default: every volume the server serves).
        #[arg(long)]
        volume: Option<PathBuf>,
        /// How long the freeze lasts (default: the server's freeze_default); `deskd thaw` ends it
        /// earlier.
        seconds: Option<u32>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// End a freeze early.
    Thaw {
        /// Only this volume (default: every volume the server serves).
        #[arg(long)]
        volume: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Find objects by name: substring by default, case-insensitive, NFC = NFD.
    ///
    /// Exit status: 0 done (with or without hits), 1 error; over every volume, 1 also when a
    /// volume could not be searched (named on stderr; the other volumes' hits are printed).
    Find {
        /// Search only this volume (default: every volume the server serves).
        #[arg(long)]
        volume: Option<PathBuf>,
        #[command(flatten)]
        matching: FindArgs,
        /// Stop after N matches (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// The name, or part of it, to look for.
        pattern: String,
        // Last: the heading of its options would carry over to the arguments after it.
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Re-create (-f), repair (default) or check (-s) a volume's desktop from its resource
    /// files, xattr mirrors and Netatalk metadata. On a volume deskd serves, the server runs it
    /// as a job while clients keep working (`deskd status` shows its progress; no answer from
    /// the server within --timeout ends it); otherwise it runs here with the desktop locked.
    ///
    /// Exit status: 0 done (with -s: the desktop is up to date), 1 with -s: differences found,
    /// 2 error.
    Rebuild {
        /// Build an entirely new desktop from the disk (no ID is lost).
        #[arg(short = 'f', long = "fresh", conflicts_with = "scan")]
        fresh: bool,
        /// Scan only: print one line per difference (`<kind> <path>: <detail>`), change nothing.
        #[arg(short = 's', long = "scan")]
        scan: bool,
        #[command(flatten)]
        walk: WalkArgs,
        /// Rebuild even with less than twice the desktop's size free.
        #[arg(long)]
        force: bool,
        /// With -f: replace a desktop of a newer format than this deskd's (what this deskd
        /// does not know of it is lost). Without it, every mode refuses such a desktop.
        #[arg(long, requires = "fresh")]
        downgrade: bool,
        #[command(flatten)]
        roots: RootArgs,
        /// Accept the ID in every resource file and xattr mirror, whoever wrote it (e.g. after
        /// restoring the user files from tar). Without it, an ID written by someone other than
        /// root or the volume owner counts only when the desktop has it for the same object.
        /// Offline only.
        #[arg(long)]
        trust_ids: bool,
        /// The server's configuration file: with -f, a volume whose `desktop_location` is set
        /// and whose desktop is still in its root gets its new desktop there, and `.Desktop`
        /// becomes the symlink to it. Offline only.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The volume's root directory (where its .Desktop is).
        volume: PathBuf,
        // With a served volume: the deskd that runs the rebuild as a job; the timeout bounds
        // each of its answers.
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Copy a volume's desktop while clients keep working, check the copy, and write a
    /// manifest beside it (FILE.manifest.json, written last). The copy is one consistent
    /// snapshot; the server is not needed and is not held up.
    ///
    /// Exit status: 0 done, 1 the copy failed its check, 2 error.
    Backup {
        /// Replace an existing backup file (or --manifest file).
        #[arg(long)]
        force: bool,
        /// Print the manifest as one JSON line instead of the summary.
        #[arg(long)]
        json: bool,
        /// With DEST `-`: write the manifest to FILE once the copy is out. Name it
        /// `BACKUP.manifest.json` for the file you store the stream in as BACKUP, and `deskd
        /// verify BACKUP` finds it; any other name needs `deskd verify --manifest FILE`.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// The server's configuration file: a volume whose `backend` there is PostgreSQL is
        /// backed up from its database (one consistent snapshot, written as an SQLite desktop:
        /// the same backup format, verified and restored alike).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The volumes' root directories (where their .Desktop is), then the backup file to
        /// write, or a directory to write `<volume name>-<UTC time>.desktop` in (which it must be
        /// for several volumes), or `-` for standard output (one volume, and not a terminal; the
        /// summary or the manifest then goes to standard error).
        #[arg(required = true, num_args = 2.., value_name = "VOLUME... DEST")]
        paths: Vec<PathBuf>,
    },
    /// Check a backup made by `deskd backup`: manifest, size, SHA-256, SQLite integrity and
    /// the counts. Changes nothing.
    ///
    /// Exit status: 0 the backup is good, 1 it is not, 2 error.
    Verify {
        /// Print the manifest as one JSON line.
        #[arg(long)]
        json: bool,
        /// The backup's manifest (default: BACKUP.manifest.json), e.g. the one `deskd backup VOL
        /// - --manifest FILE` wrote.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// The backup file.
        backup: PathBuf,
    },
    /// Put a backup back as a volume's desktop, then bring it up to what is on the disk now (a
    /// repair rebuild that starts from the backup): objects made, moved or deleted since the
    /// backup are right, and no ID handed out since is handed out again. The volume must not
    /// be served while this runs.
    ///
    /// Exit status: 0 done, 1 the backup failed its checks, 2 error.
    Restore {
        #[command(flatten)]
        walk: WalkArgs,
        /// Restore a backup with a missing or mismatched manifest, or of another desktop than
        /// the volume's, and skip the free-space check. SQLite's integrity check still applies.
        #[arg(long)]
        force: bool,
        /// When the volume's own desktop cannot be read, IDs continue this far past the
        /// backup's last ID (IDs handed out after the backup, to objects since deleted, are
        /// known nowhere else).
        #[arg(long, default_value_t = deskd_backup::DEFAULT_ID_GAP)]
        id_gap: u32,
        #[command(flatten)]
        roots: RootArgs,
        /// Accept the ID in every resource file and xattr mirror, whoever wrote it (as
        /// `deskd rebuild --trust-ids`).
        #[arg(long)]
        trust_ids: bool,
        /// The backup's manifest (default: BACKUP.manifest.json).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// The volume's desktop is in PostgreSQL (served with `backend`): make the restored
        /// SQLite desktop its desktop from now on. Stop every deskd serve of the volume and
        /// take `backend` out of their configuration first (no server may go on handing out
        /// IDs from the database); without this a marked volume is refused.
        #[arg(long)]
        leave_postgresql: bool,
        /// With --leave-postgresql when the volume's database cannot be read (no --config, or
        /// the database is lost): IDs continue after the backup's counter (or the old
        /// .Desktop's, if higher). IDs the database handed out after the backup may then be
        /// handed out again; without this such a restore is refused.
        #[arg(long, requires = "leave_postgresql")]
        ids_from_backup: bool,
        /// The server's configuration file: with --leave-postgresql, the volume's database
        /// (its `backend` there) is asked whether any deskd serve serves the volume from it,
        /// on this host or another (each holds the volume's serving lock), and the restore is
        /// refused while one does; no server opens the volume while it restores. IDs then
        /// continue after the highest of the database's counter, the backup's and the old
        /// desktop's.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The backup file (made by `deskd backup`).
        backup: PathBuf,
        /// The volume's root directory.
        volume: PathBuf,
    },
    /// Move a volume's desktop between its SQLite file and PostgreSQL, with every ID, comment,
    /// APPL and icon record, the ID counter and the volume's identity (docs/deskd.md). `--to
    /// TARGET` copies the SQLite desktop into the database in one transaction; `--from TARGET
    /// --to sqlite` writes a new SQLite desktop from the database. Offline: a served volume is
    /// refused. The password comes from --password-file or --password-env, never from TARGET.
    ///
    /// Exit status: 0 done, 2 refused or failed (nothing changed).
    Migrate {
        /// Where the desktop goes: a PostgreSQL target (`postgresql://USER@HOST:PORT/DB`, a
        /// `key=value` list with user=, or `service=NAME`), or `sqlite` (with --from).
        #[arg(long, value_name = "TARGET")]
        to: String,
        /// With `--to sqlite`: the PostgreSQL target the desktop comes from.
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
        /// The PostgreSQL password: the first line of FILE (mode 0600, not a symlink).
        #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// The PostgreSQL password: the environment variable VAR (such as PGPASSWORD).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// The volume's name in the database (default: the volume root's absolute path, as
        /// `[volume."PATH"]` names it in the configuration).
        #[arg(long)]
        name: Option<String>,
        /// With `--to sqlite`: replace the volume's desktop (of the same volume identity); the
        /// old one is kept as `.Desktop.before-migrate`. Without it, a desktop there is refused.
        #[arg(long)]
        replace: bool,
        /// The volume's root directory (where its .Desktop is).
        volume: PathBuf,
    },
    /// Stand in for Netatalk's cnid_metad/cnid_dbd: serve afpd's CNID protocol (`cnid scheme
    /// = dbd`, `cnid server = HOST:PORT` in afp.conf) from the running deskd, so Netatalk keeps
    /// its IDs in deskd's desktops. Runs until SIGTERM.
    Netatalk {
        /// Where afpd connects. The protocol has no authentication: keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:4700", value_name = "HOST:PORT")]
        listen: String,
        /// Most afpd connections served at once; more are closed at once.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
        /// Seconds a handshake, or a request once begun, may take to arrive whole.
        #[arg(long, default_value_t = 10)]
        frame_timeout: u64,
        /// Netatalk's configuration, read for each volume's `vol dbpath` folder, which the
        /// bridge makes as cnid_metad does (default: /etc/netatalk/afp.conf when it exists).
        #[arg(long, env = "DESKD_AFP_CONF", value_name = "FILE")]
        afp_conf: Option<PathBuf>,
        /// The `vol dbpath` of volumes afp.conf names none for ($v = the volume's name).
        #[arg(long, default_value = deskd_netatalk::dbpath::DEFAULT_TEMPLATE, value_name = "TEMPLATE")]
        dbpath: String,
        /// The deskd whose desktops the bridge serves.
        #[command(flatten)]
        client: ClientOptions,
    },
}

/// `deskd`'s command line: the derived one, with the `--timeout` help of the verbs that wait
/// without a limit by default (`flush`, `freeze`) saying so; the option is shared
/// ([`ClientOptions`]), its default is not (their own help, and the man pages made from it).
fn cli_command() -> clap::Command {
    let no_limit = |what: &str| {
        format!(
            "Seconds to wait for deskd's answer before giving up (the server's {what} goes on; \
             `deskd status` shows its progress). Default: no limit, unless \
             $DESKD_CLIENT_TIMEOUT is set"
        )
    };
    let (flush, freeze) = (no_limit("flush"), no_limit("freeze, with its flush,"));
    <Cli as clap::CommandFactory>::command()
        .mut_subcommand("flush", |c| c.mut_arg("timeout", |a| a.help(flush)))
        .mut_subcommand("freeze", |c| c.mut_arg("timeout", |a| a.help(freeze)))
}

fn main() -> ExitCode {
    deskd_docgen::handle_generate(cli_command);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&cli_command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let Cli {
        before_verb,
        mut command,
    } = cli;
    let reached = match reach(before_verb, &mut command) {
        Ok(r) => r,
        Err(e) => usage_error(&command, e),
    };
    let cli = Run { command, reached };
    // The polling knobs are read where connections are made, long after start: say now
    // what is wrong with them.
    if let Err(e) = deskd_proto::spin::Settings::from_env() {
        eprintln!("deskd: {e}");
        return ExitCode::from(2);
    }
    if matches!(
        cli.command,
        Command::Find { .. } | Command::Status { .. } | Command::Metrics { .. }
    ) {
        // `deskd find … | head` ends quietly, as find(1) does. (Not for the verbs that change
        // things, nor for the server, which must outlive a client that hangs up.)
        deskd_cli::output::end_quietly_on_a_closed_pipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deskd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A parsed command line with its connection options resolved.
struct Run {
    command: Command,
    reached: Reached,
}

/// Where a verb finds deskd (a client verb) or listens (`serve`); the defaults for the verbs the
/// other does not apply to, which [`reach`] made sure were given none of its options.
struct Reached {
    connection: ConnectionArgs,
    serve: ServeOptions,
}

/// Resolve the connection options: the verb's own, those before the verb, the environment. An
/// option before the verb that the verb does not take is an error.
fn reach(before: BeforeVerb, command: &mut Command) -> Result<Reached, VerbOptionError> {
    let none = ConnectionArgs {
        socket: None,
        token_file: None,
        timeout: None,
    };
    let offline = |before: BeforeVerb, verb, what| {
        before.offline(verb, what).map(|()| Reached {
            connection: none.clone(),
            serve: ServeOptions::default(),
        })
    };
    match command {
        Command::Serve { own, .. } => Ok(Reached {
            connection: none.clone(),
            serve: before.serve(std::mem::take(own))?,
        }),
        Command::Status { client, .. }
        | Command::Metrics { client }
        | Command::Flush { client, .. }
        | Command::Freeze { client, .. }
        | Command::Thaw { client, .. }
        | Command::Find { client, .. }
        | Command::Rebuild { client, .. }
        | Command::Netatalk { client, .. } => Ok(Reached {
            connection: before.client(std::mem::take(client))?,
            serve: ServeOptions::default(),
        }),
        Command::Backup { .. } => offline(before, "backup", "copies a desktop file"),
        Command::Verify { .. } => offline(before, "verify", "reads a backup file"),
        Command::Restore { .. } => offline(before, "restore", "writes a desktop from a backup"),
        Command::Migrate { .. } => offline(before, "migrate", "moves a desktop offline"),
    }
}

/// Exit 2 with clap's usage error, as for any other bad command line.
fn usage_error(command: &Command, e: VerbOptionError) -> ! {
    let mut cli = Cli::command();
    let verb = verb_name(command);
    let cmd = cli.find_subcommand_mut(verb).cloned().unwrap_or(cli);
    cmd.bin_name(format!("deskd {verb}"))
        .error(clap::error::ErrorKind::ArgumentConflict, e)
        .exit()
}

/// The verb as typed, for messages.
fn verb_name(command: &Command) -> &'static str {
    match command {
        Command::Serve { .. } => "serve",
        Command::Status { .. } => "status",
        Command::Metrics { .. } => "metrics",
        Command::Flush { .. } => "flush",
        Command::Freeze { .. } => "freeze",
        Command::Thaw { .. } => "thaw",
        Command::Find { .. } => "find",
        Command::Rebuild { .. } => "rebuild",
        Command::Backup { .. } => "backup",
        Command::Verify { .. } => "verify",
        Command::Restore { .. } => "restore",
        Command::Migrate { .. } => "migrate",
        Command::Netatalk { .. } => "netatalk",
    }
}

/// Connect, and resolve `--volume` (if given) to its handle.
fn connect_for(args: &ConnectionArgs, volume: &Option<PathBuf>) -> Result<(Client, Option<u32>)> {
    let mut client = args.connect().map_err(|e| anyhow!("{e}"))?;
    let vol = match volume {
        None => None,
        Some(p) => Some(client.open_volume(p).map_err(|e| anyhow!("{e}"))?.vol),
    };
    Ok((client, vol))
}

/// [`connect_for`] for a verb that waits for its answer without the client's usual limit
/// (`flush`, `freeze`: what a flush promises may take longer than 60 s after a burst of a
/// million files) unless `--timeout` or `$DESKD_CLIENT_TIMEOUT` gives one.
fn connect_waiting_for(
    args: &ConnectionArgs,
    volume: &Option<PathBuf>,
) -> Result<(Client, Option<u32>)> {
    let (mut client, vol) = connect_for(args, volume)?;
    if !args.timeout_given() {
        client.set_timeout(None).map_err(|e| anyhow!("{e}"))?;
    }
    Ok((client, vol))
}

/// `deskd restore --leave-postgresql --config FILE`: the volume's serving lock in its
/// database, held exclusively, and the database's ID counter for it (None when the
/// configuration gives the volume no database, or, with `--ids-from-backup`, when the database
/// cannot be asked). Refused while any server serves the volume from it, or when the database
/// cannot be asked and the admin did not accept the backup's counter.
fn unserved_for_restore(
    config: &Path,
    volume: &Path,
    ids_from_backup: bool,
) -> Result<Option<deskd_pg::transfer::UnservedHold>> {
    let Some(pg) = deskd_cli::pg_admin::from_config(config, volume)? else {
        // Said, as without --config (hostile review of stop 41, finding 6: a wrong file was
        // taken for a check that passed); the restore itself then needs --ids-from-backup.
        eprintln!(
            "deskd restore: {} gives {} no database (`backend`): not checked whether a deskd \
             serve serves it from one, nor its ID counter there read (give the configuration \
             from before `backend` was taken out); make sure every server of the volume is \
             stopped",
            config.display(),
            volume.display()
        );
        return Ok(None);
    };
    match deskd_pg::transfer::hold_unserved_session(&pg.options, &pg.name) {
        // The database holds no such volume: nothing was locked there nor counted, so its
        // servers (if any) use another database (hostile review of stop 42, finding 3: this
        // was refused as if --config had not been given, and with --ids-from-backup went
        // ahead without a word while the volume's server ran).
        Ok(hold) if hold.last_id.is_none() => {
            let what = format!(
                "{} holds no deskd volume named {:?} ({} names that database): not checked \
                 whether a deskd serve serves {} (from the database its servers use), nor its \
                 ID counter there read",
                pg.describe(),
                pg.name,
                config.display(),
                pg.root.display()
            );
            if ids_from_backup {
                eprintln!(
                    "deskd restore: {what}; IDs continue after the backup's counter \
                     (--ids-from-backup); make sure every server of the volume is stopped"
                );
                Ok(None)
            } else {
                Err(anyhow!(
                    "{what}; nothing was changed (give the configuration of the volume's \
                     servers, or --ids-from-backup when its database is lost for good)"
                ))
            }
        }
        Ok(hold) => Ok(Some(hold)),
        Err(e @ deskd_pg::PgError::Served { .. }) => Err(anyhow!("{e}")),
        Err(e) if ids_from_backup => {
            eprintln!(
                "deskd restore: cannot ask {} about {}: {e}; not checked whether a deskd serve \
                 serves it, and IDs continue after the backup's counter (--ids-from-backup)",
                pg.describe(),
                pg.root.display()
            );
            Ok(None)
        }
        Err(e) => Err(anyhow!(
            "cannot check whether a deskd serve serves {} from {}, nor read its ID counter \
             there: {e}; nothing was changed (when the database is lost for good and every \
             server of the volume is stopped, restore with --ids-from-backup: IDs the database \
             handed out after the backup may then be handed out again)",
            pg.root.display(),
            pg.describe()
        )),
    }
}

/// `deskd status`'s lines for a configured volume the server refused.
fn print_not_served(n: &deskd_proto::VolumeNotServed, json: bool) {
    let root = display_bytes(&n.root);
    // The server's message often names the root already.
    let why = n.why_past(&root);
    if json {
        let v = serde_json::json!({
            "path": root,
            "served": false,
            "not_served": why,
            "since": n.since,
        });
        println!("{v}");
    } else {
        println!("{root}");
        println!("  NOT SERVED:   {why} (since {})", ctime_string(n.since));
    }
}

/// What `deskd freeze` prints for one volume's answer.
fn freeze_lines(reply: Response, seconds: Option<u32>) -> Result<Vec<String>> {
    let clamp = |clamped: bool, max: u32| {
        clamped.then(|| {
            format!(
                "FreezeTime ({}) > FreezeMax ({max}), using new value: {max}",
                seconds.unwrap_or(0)
            )
        })
    };
    Ok(match reply {
        Response::Frozen {
            until,
            clamped,
            max,
        } => clamp(clamped, max)
            .into_iter()
            .chain([format!("frozen until {}", ctime_string(until))])
            .collect(),
        // A desktop in PostgreSQL: the snapshot pg_dump reads while it lasts.
        Response::FrozenSnapshot {
            until,
            clamped,
            max,
            snapshot,
        } => clamp(clamped, max)
            .into_iter()
            .chain([
                format!("frozen until {}", ctime_string(until)),
                format!("snapshot {snapshot}"),
            ])
            .collect(),
        other => return Err(anyhow!("unexpected reply {other:?}")),
    })
}

/// One request, with the server's error as the message.
fn call(client: &mut Client, request: Request) -> Result<Response> {
    client.call(request).map_err(|e| anyhow!("{e}"))
}

fn run(cli: Run) -> Result<ExitCode> {
    let connection = &cli.reached.connection;
    if matches!(
        cli.command,
        Command::Rebuild { .. }
            | Command::Backup { .. }
            | Command::Verify { .. }
            | Command::Restore { .. }
            | Command::Migrate { .. }
    ) {
        init_offline_logging();
    }
    match cli.command {
        Command::Serve {
            config,
            listen,
            roots,
            read_only,
            volumes,
            own: _,
        } => serve(
            &cli.reached.serve,
            config,
            listen,
            roots,
            read_only,
            volumes,
        ),
        Command::Netatalk {
            listen,
            max_connections,
            frame_timeout,
            afp_conf,
            dbpath,
            client: _,
        } => netatalk(
            connection,
            &cnid_listener::Options {
                listen,
                max_connections,
                frame_timeout,
                afp_conf,
                dbpath,
            },
        ),
        Command::Rebuild {
            fresh,
            scan,
            walk,
            force,
            downgrade,
            roots,
            trust_ids,
            config,
            volume,
            client: _,
        } => {
            let WalkArgs { verbose, json, .. } = walk;
            let relocate_to = match (&config, fresh) {
                (Some(path), true) => relocation_dir(path, &volume)?,
                _ => None,
            };
            let mode = if scan {
                deskd_rebuild::Mode::Scan
            } else if fresh {
                deskd_rebuild::Mode::Fresh
            } else {
                deskd_rebuild::Mode::Repair
            };
            let options = deskd_rebuild::Options {
                nested: roots.nested,
                world_writable: roots.world_writable,
                downgrade,
                trust_ids,
                relocate_to,
                ..deskd_rebuild::Options::new(mode, walk.threads(), force)
            };
            if let Some((client, vol)) = served(connection, &volume) {
                if options.relocate_to.is_some() {
                    eprintln!(
                        "deskd rebuild: {}: moving the desktop to desktop_location works offline only; stop serving the volume first",
                        volume.display()
                    );
                    return Ok(ExitCode::from(2));
                }
                if trust_ids {
                    eprintln!(
                        "deskd rebuild: {}: --trust-ids works offline only; stop serving the volume first",
                        volume.display()
                    );
                    return Ok(ExitCode::from(2));
                }
                return Ok(rebuild_online(
                    client,
                    vol,
                    &volume,
                    &options,
                    verbose || scan,
                    json,
                    connection.timeout(),
                ));
            }
            Ok(rebuild(&volume, &options, verbose || scan, json))
        }
        Command::Backup {
            force,
            json,
            manifest,
            config,
            mut paths,
        } => {
            let config = config.as_deref();
            let dest = paths.pop().expect("clap requires two paths");
            if dest.as_os_str() == "-" {
                if paths.len() > 1 {
                    eprintln!("deskd backup: one volume at a time goes to standard output");
                    return Ok(ExitCode::from(2));
                }
                // A desktop's bytes on a terminal are garbage to read and can drive it (escape
                // sequences): refuse before anything is read.
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    eprintln!(
                        "deskd backup: standard output is a terminal; redirect it to a file or a \
                         pipe (deskd backup {} - --manifest FILE.manifest.json > FILE)",
                        paths[0].display()
                    );
                    return Ok(ExitCode::from(2));
                }
                let manifest = manifest.map(|path| deskd_backup::ManifestTarget { path, force });
                return Ok(backup_to_stdout(&paths[0], config, json, manifest.as_ref()));
            }
            if manifest.is_some() {
                eprintln!(
                    "deskd backup: --manifest is for a backup to standard output (DEST -); a \
                     backup file's manifest is FILE.manifest.json beside it"
                );
                return Ok(ExitCode::from(2));
            }
            // `bk/` for a folder not made yet: the file system's "Not a directory" said
            // nothing of what to do (newcomer review of stop 43).
            if std::os::unix::ffi::OsStrExt::as_bytes(dest.as_os_str()).ends_with(b"/")
                && !dest.is_dir()
            {
                eprintln!(
                    "deskd backup: {}: no such directory (a DEST ending in / names one): \
                     create it first",
                    dest.display()
                );
                return Ok(ExitCode::from(2));
            }
            if paths.len() > 1 && !dest.is_dir() {
                eprintln!(
                    "deskd backup: {}: not a directory (several volumes go into a directory)",
                    dest.display()
                );
                return Ok(ExitCode::from(2));
            }
            // Each volume in turn; one that fails does not stop the others.
            let mut worst = ExitCode::SUCCESS;
            for volume in &paths {
                let code = backup(volume, config, &dest, force, json);
                if code != ExitCode::SUCCESS && worst != ExitCode::from(2) {
                    worst = code;
                }
            }
            Ok(worst)
        }
        Command::Verify {
            json,
            manifest,
            backup,
        } => Ok(verify(&backup, manifest.as_deref(), json)),
        Command::Restore {
            walk,
            force,
            id_gap,
            roots,
            trust_ids,
            manifest,
            leave_postgresql,
            ids_from_backup,
            config,
            backup,
            volume,
        } => {
            // Held until the restore is done: no server serves the volume from its database.
            let mut unserved = match (leave_postgresql, &config) {
                (true, Some(config)) => {
                    match unserved_for_restore(config, &volume, ids_from_backup) {
                        Ok(hold) => hold,
                        Err(e) => {
                            eprintln!("deskd restore: {e}");
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
                (true, None) => {
                    eprintln!(
                        "deskd restore: not checked whether a deskd serve serves {} from its \
                         database (give --config FILE to check); make sure every server of \
                         the volume is stopped",
                        volume.display()
                    );
                    None
                }
                (false, _) => None,
            };
            let options = deskd_backup::RestoreOptions {
                threads: walk.threads(),
                force,
                id_gap,
                nested: roots.nested,
                world_writable: roots.world_writable,
                trust_ids,
                manifest,
                leave_postgresql,
                database_last_id: unserved.as_ref().and_then(|hold| hold.last_id),
                ids_from_backup,
            };
            // Recorded in the database before the restore removes the root's mark, under the
            // lock: a server still configured with `backend` that starts later (a host down
            // meanwhile) refuses the stale copy instead of handing out IDs from it again, the
            // restored desktop's (hostile review of stop 42, finding 1). A restore killed
            // after it leaves the volume refused by such servers until it is run again.
            if let Some(hold) = unserved.as_mut() {
                if let Err(e) = hold.record_moved_out() {
                    eprintln!(
                        "deskd restore: cannot record in the database that {} is moved out of \
                         it: {e}; nothing was changed",
                        volume.display()
                    );
                    return Ok(ExitCode::from(2));
                }
            }
            let code = restore(&backup, &volume, &options, walk.verbose, walk.json);
            // Refused or failed with the mark still there: the volume was not moved out.
            if code != ExitCode::SUCCESS && deskd_volume::desktop_backend(&volume).is_some() {
                if let Some(hold) = unserved.as_mut() {
                    if let Err(e) = hold.forget_moved_out() {
                        eprintln!(
                            "deskd restore: the database still records {} as moved out of it \
                             ({e}): its servers refuse it until a restore goes through",
                            volume.display()
                        );
                    }
                }
            }
            drop(unserved);
            if code == ExitCode::SUCCESS && leave_postgresql {
                // As migrate --to sqlite says it: a server with `backend` refuses the volume
                // now (newcomer review of stop 42, finding 9).
                eprintln!(
                    "deskd restore: take `backend` out of every deskd serve's configuration of \
                     this volume (`backend = \"sqlite\"` in its `[volume.\"PATH\"]` table when \
                     `[defaults]` gives one) before starting them, or reload (SIGHUP) the running \
                     ones: the desktop is its SQLite file now"
                );
            }
            Ok(code)
        }
        Command::Metrics { .. } => {
            let mut client = connection.connect().map_err(|e| anyhow!("{e}"))?;
            let text = client.metrics().map_err(|e| anyhow!("{e}"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            to,
            from,
            password_file,
            password_env,
            name,
            replace,
            volume,
        } => {
            let password = match (password_file, password_env) {
                (Some(file), _) => deskd_pg::PasswordSource::File(file),
                (None, Some(var)) => deskd_pg::PasswordSource::Env(var),
                (None, None) => deskd_pg::PasswordSource::None,
            };
            Ok(migrate(
                &volume,
                &to,
                from,
                password,
                name.as_deref(),
                replace,
            ))
        }
        Command::Status { volume, json, .. } => {
            let mut client = connection.connect().map_err(|e| anyhow!("{e}"))?;
            let vol = match &volume {
                None => None,
                Some(p) => match client.open_volume(p) {
                    Ok(info) => Some(info.vol),
                    Err(e) => {
                        // A configured volume the server refused: shown as plain status
                        // shows it (exit 1: it is not served).
                        let refused = (e.code() == Some(ErrorCode::NoSuchVolume))
                            .then(|| client.refused_volume(p))
                            .flatten();
                        let Some(n) = refused else {
                            return Err(anyhow!("{e}"));
                        };
                        print_not_served(&n, json);
                        return Ok(ExitCode::FAILURE);
                    }
                },
            };
            let statuses = client.status(vol).map_err(|e| anyhow!("{e}"))?;
            // A server that predates the figures answers BadRequest: status goes on without.
            let memory = client.memory().ok();
            let memory = memory.as_ref();
            // Likewise live tracking (issue 23): a separate request, so older peers keep working.
            let watch = client.watch(vol).ok();
            let watch = watch.as_deref();
            // A PostgreSQL volume's read cache: its figures are in the metrics text.
            let metrics = client.metrics().ok();
            let metrics = metrics.as_deref();
            for s in statuses {
                let root = display_bytes(&s.root);
                // The server withholds the volume's activity figures from a user who is not
                // its admin: null in JSON, "—" in text (docs/security.md).
                let withheld = s.figures_withheld();
                // A desktop in an unreachable database has no counts to show: not 0.
                let unread = s.counts_unknown();
                let last_id = s.last_id_shown();
                if json {
                    let v = serde_json::json!({
                        "path": root,
                        "desktop": display_bytes(&s.desktop),
                        "withheld": withheld,
                        "objects": s.objects_shown(),
                        "last_id": last_id,
                        "ids_left": last_id.map(deskd_db::ids::ids_left),
                        "id_space_warning": last_id.and_then(deskd_db::ids::space_warning),
                        "read_only": s.read_only,
                        "read_only_reason": s.read_only_reason,
                        "last_flush": s.last_flush,
                        "clean_at_start": s.clean_at_start,
                        "frozen_until": s.frozen_until,
                        "wal_bytes": deskd_proto::shown(s.wal_bytes),
                        "check_problems": s.check_problems,
                        "rebuild": s.rebuild.as_ref().map(|r| serde_json::json!({
                            "job": r.job,
                            "mode": format!("{:?}", r.mode).to_lowercase(),
                            "phase": r.phase,
                            "pass": r.pass,
                            "objects": deskd_proto::shown(r.objects),
                            "started": r.started,
                            "error": r.finished.as_ref().and_then(|f| f.as_ref().err()),
                        })),
                        "clients": deskd_cli::active_users::json(&s),
                        "hidden_clients": s.hidden_clients,
                        "memory": deskd_cli::memory_figures::volume_json(memory, s.vol),
                        "server_memory": deskd_cli::memory_figures::server_json(memory),
                        "watch": deskd_cli::watch_figures::json(watch, s.vol),
                        "read_cache": deskd_cli::read_cache_figures::json(metrics, &s.root),
                    });
                    println!("{v}");
                } else {
                    let when = |t: i64| {
                        if t == 0 {
                            "never".to_string()
                        } else {
                            ctime_string(t)
                        }
                    };
                    println!("{root}");
                    println!("  desktop:      {}", display_bytes(&s.desktop));
                    if withheld {
                        println!(
                            "  (objects, last ID, WAL, the watcher's counts, the desktop's size, \
                             its mappings and its name index are shown only to the volume's \
                             admins: root, deskd's user, the volume's owner, a TCP token holder: —)"
                        );
                    }
                    if unread {
                        println!("  objects:      unknown (the database is unreachable)");
                        println!("  last ID:      unknown (the database is unreachable)");
                    } else if withheld {
                        println!("  objects:      —");
                        println!("  last ID:      —");
                    } else {
                        println!("  objects:      {}", s.objects);
                        println!("  last ID:      {}", s.last_id);
                    }
                    if let Some(warning) = last_id.and_then(deskd_db::ids::space_warning) {
                        println!("  WARNING:      {warning}");
                    }
                    if s.last_flush == 0 && s.desktop.starts_with(b"postgresql ") {
                        // Nothing waits to be flushed there: each batch is committed.
                        println!(
                            "  last flush:   none asked (each batch is committed in the database)"
                        );
                    } else {
                        println!("  last flush:   {}", when(s.last_flush));
                    }
                    println!(
                        "  clean start:  {}",
                        if s.clean_at_start {
                            "yes"
                        } else {
                            "no (missing DB shutdown)"
                        }
                    );
                    println!(
                        "  frozen until: {}",
                        s.frozen_until
                            .map(when)
                            .unwrap_or_else(|| "not frozen".into())
                    );
                    // A desktop in PostgreSQL has no WAL of deskd's (docs: "and no WAL"; it
                    // printed `WAL: 0 bytes`, and `—` to a non-admin: newcomer review of stop 42).
                    let in_postgresql = s.desktop.starts_with(b"postgresql ");
                    match deskd_proto::shown(s.wal_bytes) {
                        _ if in_postgresql => {}
                        Some(n) => println!("  WAL:          {n} bytes"),
                        None => println!("  WAL:          —"),
                    }
                    match (&s.read_only_reason, s.read_only) {
                        (Some(why), _) => println!("  read-only:    yes: {why}"),
                        (None, read_only) => {
                            println!("  read-only:    {}", if read_only { "yes" } else { "no" })
                        }
                    }
                    if let Some(r) = &s.rebuild {
                        let mode = format!("{:?}", r.mode).to_lowercase();
                        match &r.finished {
                            None => println!(
                                "  rebuild:      job {} ({mode}) {}, pass {}, {} objects walked, started {}",
                                r.job,
                                r.phase,
                                r.pass,
                                deskd_proto::shown(r.objects)
                                    .map_or("—".to_owned(), |n| n.to_string()),
                                when(r.started)
                            ),
                            Some(Ok(_)) => println!(
                                "  rebuild:      job {} ({mode}) done, started {}",
                                r.job,
                                when(r.started)
                            ),
                            Some(Err(e)) => println!(
                                "  rebuild:      job {} ({mode}) {}: {e}",
                                r.job, r.phase
                            ),
                        }
                    }
                    if !s.check_problems.is_empty() {
                        println!(
                            "  CHECK FAILED: {} (run deskd rebuild)",
                            s.check_problems.join("; ")
                        );
                    }
                    if let Some(line) =
                        deskd_cli::memory_figures::volume_line(memory, s.vol, in_postgresql)
                    {
                        println!("{line}");
                    }
                    if let Some(line) = deskd_cli::watch_figures::line(watch, s.vol) {
                        println!("{line}");
                    }
                    if let Some(line) = deskd_cli::read_cache_figures::line(metrics, &s.root) {
                        println!("{line}");
                    }
                    for line in deskd_cli::active_users::text_lines(&s) {
                        println!("{line}");
                    }
                }
            }
            // The configured volumes the server refused (at start or a reload), after the
            // served ones; a server that predates the request answers BadRequest.
            let refused = match vol {
                None => client.not_served().unwrap_or_default(),
                Some(_) => Vec::new(),
            };
            for n in refused {
                print_not_served(&n, json);
            }
            if let (Some(m), false) = (memory, json) {
                for line in deskd_cli::memory_figures::server_lines(m) {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Flush { volume, .. } => {
            // What a flush promises (every change made before it in the desktop) may take
            // longer than the usual 60 s after a burst of a million files; a backup script
            // after it must not see a timeout for a flush still working. Progress is on
            // stderr; `--timeout` bounds it when given.
            let (mut client, vol) = connect_waiting_for(connection, &volume)?;
            // A flush waits for the watcher's backlog (seconds after a burst of a million
            // files): past a moment, say on stderr what it waits for, from status.
            let progress = deskd_cli::watch_figures::FlushProgress::start({
                let (connection, volume) = (connection.clone(), volume.clone());
                move || {
                    let (mut client, vol) = connect_for(&connection, &volume).ok()?;
                    client.watch(vol).ok()
                }
            });
            let flushed = client.call(Request::Flush { vol });
            progress.stop();
            match flushed {
                Err(deskd_client::ClientError::Timeout) => {
                    return Err(anyhow!(
                        "timed out waiting for deskd's answer (--timeout); the server's flush \
                         goes on: `deskd status` shows the watcher's backlog"
                    ))
                }
                other => other.map_err(|e| anyhow!("{e}"))?,
            };
            // The flush writes what a burst left owed for a bounded time only: say what is
            // left (a server that predates the figure says nothing).
            if let Ok(all) = client.watch(vol) {
                if let Some(note) = deskd_cli::watch_figures::owed_after_flush(&all) {
                    println!("{note}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Freeze {
            volume, seconds, ..
        } => {
            // A freeze flushes first: no limit to its wait unless told one, as for flush.
            let (mut client, vol) = connect_waiting_for(connection, &volume)?;
            // Without --volume, every volume is frozen and every answer printed (each has
            // its own time and, on PostgreSQL, its own snapshot), each line led by the
            // volume's root when there are several.
            let targets: Vec<(u32, Option<String>)> = match vol {
                Some(v) => vec![(v, None)],
                None => {
                    let all = client.volumes().map_err(|e| anyhow!("{e}"))?;
                    let several = all.len() > 1;
                    all.into_iter()
                        .map(|i| {
                            let root = String::from_utf8_lossy(&i.root).into_owned();
                            (i.vol, several.then_some(root))
                        })
                        .collect()
                }
            };
            let mut failed = 0;
            for (vol, root) in targets {
                let lead = root.as_ref().map_or(String::new(), |r| format!("{r}: "));
                let reply = call(
                    &mut client,
                    Request::Freeze {
                        vol: Some(vol),
                        seconds,
                    },
                );
                let lines = match reply {
                    Ok(reply) => freeze_lines(reply, seconds)?,
                    Err(e) if root.is_some() => {
                        // One volume refused (not its admin, a rebuild running): the others
                        // still answer; the exit status says one failed.
                        eprintln!("deskd: {e}");
                        failed += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for line in lines {
                    println!("{lead}{line}");
                }
            }
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Thaw { volume, .. } => {
            let (mut client, vol) = connect_for(connection, &volume)?;
            call(&mut client, Request::Thaw { vol })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Find {
            volume,
            matching,
            limit,
            pattern,
            ..
        } => {
            let (mode, json) = (matching.mode(&pattern), matching.json);
            let (mut client, vol) = connect_for(connection, &volume)?;
            let volumes = match vol {
                Some(v) => client
                    .volumes()
                    .map_err(|e| anyhow!("{e}"))?
                    .into_iter()
                    .filter(|i| i.vol == v)
                    .collect(),
                None => client.volumes().map_err(|e| anyhow!("{e}"))?,
            };
            let mut printed = 0u64;
            let limit = limit.unwrap_or(u64::MAX);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            // Over every volume, one the server cannot search (its database down) is named on
            // stderr and the others' hits still printed (newcomer review of stop 41); the
            // exit status says one was missed. A broken connection still ends the search.
            let every = volume.is_none();
            let mut missed = false;
            'volumes: for v in volumes {
                let mut after_id = 0;
                loop {
                    let page = (limit - printed).min(5000) as u32;
                    let found = client.objects(Request::Find {
                        vol: v.vol,
                        pattern: pattern.clone(),
                        mode,
                        limit: page,
                        after_id,
                    });
                    let hits = match found {
                        Ok(hits) => hits,
                        Err(e @ deskd_client::ClientError::Server(_)) if every => {
                            out.flush()?;
                            eprintln!(
                                "deskd find: {}: not searched{}: {e}",
                                display_bytes(&v.root),
                                if after_id == 0 { "" } else { " to the end" }
                            );
                            missed = true;
                            continue 'volumes;
                        }
                        Err(e) => return Err(anyhow!("{e}")),
                    };
                    for o in &hits {
                        write_match(&mut out, json, &v.root, o)?;
                        printed += 1;
                        if printed >= limit {
                            break 'volumes;
                        }
                    }
                    match hits.last() {
                        Some(last) if hits.len() as u32 == page => after_id = last.id,
                        _ => break,
                    }
                }
            }
            out.flush()?;
            Ok(if missed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Log to stderr as `deskd serve` does (`DESKD_LOG` filters).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(deskd_cli::log_lines::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DESKD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Warnings of the offline verbs (rebuild, backup, verify, restore) to stderr, one short line
/// each: a desktop whose mode was tightened, a desktop replaced with `--downgrade` or restored
/// with `--force` (`DESKD_LOG` filters, as for the server).
fn init_offline_logging() {
    tracing_subscriber::fmt()
        .with_writer(deskd_cli::log_lines::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DESKD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// `deskd netatalk`: accept afpd connections, one thread each, until killed.
fn netatalk(connection: &ConnectionArgs, options: &cnid_listener::Options) -> Result<ExitCode> {
    init_logging();
    let listener = cnid_listener::open(options)?;
    let address = connection.address();
    // Fail early, with deskd's own message, when deskd is not there.
    address.connect().map_err(|e| anyhow!("{e}"))?;
    // A reload (systemctl reload, a HELIOS-style reconf) must not end the bridge: afp.conf is
    // read at each afpd connection, so there is nothing to read again.
    let mut hangups = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("cannot handle SIGHUP")?;
    std::thread::spawn(move || {
        for _ in hangups.forever() {
            tracing::info!(
                "SIGHUP: nothing to reload: afp.conf is read at each afpd connection; \
                 --listen and the deskd connection need a restart"
            );
        }
    });
    let whose = format!("for deskd at {}", address.endpoint);
    listener.serve(
        // deskd lists the bridge's connections by their own peer credentials.
        std::sync::Arc::new(move |_: &str| {
            address
                .connect()
                .map(|c| Box::new(c) as Box<dyn deskd_netatalk::Desk>)
        }),
        &whose,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The directory `desktop_location` of the configuration file at `path` names for `volume`
/// (`<location>/<volume path>`, relative locations under `state_dir`); `None` when the volume
/// has no location (or is not in the file), or its desktop is relocated already (its
/// `.Desktop` is a link: there is nothing to move, so a served volume is rebuilt online).
fn relocation_dir(path: &Path, volume: &Path) -> Result<Option<PathBuf>> {
    let file = ConfigFile::load(path)?;
    let config = file.resolve(deskd_proto::socket_path(None), &[])?;
    let root = std::fs::canonicalize(volume)
        .with_context(|| format!("{}: cannot resolve", volume.display()))?;
    if std::fs::symlink_metadata(root.join(deskd_volume::DESKTOP_FILE))
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Ok(None);
    }
    let found = config
        .volumes
        .iter()
        .find(|v| std::fs::canonicalize(&v.root).is_ok_and(|r| r == root));
    Ok(found
        .and_then(|v| v.desktop_location.as_ref())
        .map(|location| location.join(root.strip_prefix("/").unwrap_or(&root))))
}

/// Raise the soft limit on open files to the hard one. Every socket, TCP, HTTP and afpd
/// connection holds descriptors, and a server started by hand gets the shell's soft limit
/// (often 1024, below the connection caps together); the unit sets its own `LimitNOFILE`.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
}

fn serve(
    own: &ServeOptions,
    config: Option<PathBuf>,
    listen: Option<String>,
    roots: RootArgs,
    read_only: bool,
    volumes: Vec<PathBuf>,
) -> Result<ExitCode> {
    init_logging();
    raise_open_file_limit();
    // The configuration as the command line and the file say; read again on SIGHUP.
    let load = || -> Result<deskd_server::Config> {
        let mut file = match &config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let explicit = own.socket.clone().or_else(|| file.server.socket.clone());
        let socket = deskd_proto::socket_path(explicit);
        if let Endpoint::Tcp(_) = Endpoint::parse(socket.as_os_str()) {
            return Err(anyhow!(
                "{}: deskd serve needs a Unix socket path here; listen on TCP with --listen HOST:PORT",
                socket.display()
            ));
        }
        if listen.is_some() {
            file.server.listen = listen.clone();
        }
        if own.token_file.is_some() {
            file.server.token_file = own.token_file.clone();
        }
        if file.server.backup_dir.is_some() && file.server.http_listen.is_none() {
            // Only the admin page's backup action uses it: a setting that does nothing.
            tracing::warn!(
                "backup_dir is set but http_listen is not: backup_dir is used only by the \
                 admin page's backup action (deskd backup takes its own directory)"
            );
        }
        let mut resolved = file.resolve(socket, &volumes)?;
        for v in &mut resolved.volumes {
            v.nested |= roots.nested;
            v.world_writable |= roots.world_writable;
            v.read_only |= read_only;
        }
        Ok(resolved)
    };
    let has_file = config.is_some();
    let config = load()?;
    for v in &config.volumes {
        if !Path::new(&v.root).is_dir() {
            return Err(anyhow!("{}: not a directory", v.root.display()));
        }
    }
    // Handlers first: once the socket answers, a SIGTERM must already mean a clean shutdown.
    // With the sender's pid and uid, for the audit log's line on a reload.
    let mut signals = signal_hook::iterator::SignalsInfo::<
        signal_hook::iterator::exfiltrator::WithOrigin,
    >::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let configured = config.volumes.len();
    // Read at start only: a reload that changes it says so.
    let started_netatalk = config.netatalk.clone();
    // afpd's CNID listener: afp.conf read and the port bound before any volume is opened.
    let cnid = config
        .netatalk
        .as_ref()
        .map(|prefs| cnid_listener::open(&cnid_listener::Options::from_prefs(prefs)))
        .transpose()
        .context("[netatalk]")?;
    // Checked and bound before the server starts: a bad http_* setting stops here.
    let exports = deskd_cli::http_side::Exports::new(&config);
    let http = deskd_cli::http_side::bind(&config, &exports)?;
    let http_at_start = config.http.clone();
    let server = Server::start(config).context("cannot start")?;
    if let Some(cnid) = cnid {
        cnid.spawn_in_serve(server.in_process())?;
    }
    let http = match http {
        Some(bound) => {
            let source = server.metrics();
            let metrics: deskd_http::MetricsFn = std::sync::Arc::new(move |admin| match admin {
                true => source.text(),
                false => source.text_for_anyone(),
            });
            Some(bound.serve(metrics).context("cannot start the HTTP side")?)
        }
        None => None,
    };
    // Under systemd (Type=notify): ready only now, with every volume open and the socket bound,
    // so file servers ordered after deskd find it answering.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "serving {} of {configured} volume(s)",
            server.served_volumes()
        )),
    ]);
    for origin in signals.forever() {
        let sig = origin.signal;
        if sig == signal_hook::consts::SIGHUP {
            let sender = origin.process.map(|p| (p.uid, p.pid));
            server.audit_signal("reload (SIGHUP)", sender);
            // Without a configuration file there is nothing to re-read.
            let reloaded = match has_file.then(load).transpose() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("configuration not reloaded, the old one stays: {e:#}");
                    None
                }
            };
            // Before the server's "reconfigured" line, so that line means the new token holds.
            if let Some(http) = &http {
                if let Err(e) = http.reload_token() {
                    tracing::error!("{e}; the previous HTTP token stays in force");
                }
            }
            server.reconfigure(reloaded.as_ref());
            // The admin page's backup of a PostgreSQL volume follows its reloaded `backend`.
            if let Some(reloaded) = &reloaded {
                exports.update(reloaded);
            }
            if reloaded
                .as_ref()
                .is_some_and(|c| c.netatalk != started_netatalk)
            {
                tracing::warn!(
                    "[netatalk] changed: the afpd CNID listener keeps its start-up settings \
                     until deskd restarts"
                );
            }
            if let Some(c) = &reloaded {
                if c.http != http_at_start {
                    tracing::warn!("http_* and backup_dir settings change at the next start");
                }
            }
            if let Some(c) = &reloaded {
                notify_systemd(&[sd_notify::NotifyState::Status(&format!(
                    "serving {} of {} volume(s)",
                    server.served_volumes(),
                    c.volumes.len()
                ))]);
            }
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    notify_systemd(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("flushing desktops"),
    ]);
    if let Some(http) = http {
        http.shutdown();
    }
    server.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Tell systemd about a state change when it started us with `$NOTIFY_SOCKET` (else nothing).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The server and the volume's handle, when a running deskd serves `volume`.
fn served(args: &ConnectionArgs, volume: &Path) -> Option<(Client, u32)> {
    let root = std::fs::canonicalize(volume).ok()?;
    let mut client = args.connect().ok()?;
    let vol = client.open_volume(&root).ok()?.vol;
    Some((client, vol))
}

/// Print one difference line (`<kind> <path>: <detail>`, or JSON).
fn write_difference(
    out: &mut impl std::io::Write,
    json: bool,
    kind: &str,
    path: &[u8],
    detail: &str,
) -> std::io::Result<()> {
    if json {
        let line =
            serde_json::json!({ "kind": kind, "path": display_bytes(path), "detail": detail });
        writeln!(out, "{line}")
    } else {
        out.write_all(kind.as_bytes())?;
        out.write_all(b" ")?;
        out.write_all(path)?;
        writeln!(out, ": {detail}")
    }
}

fn progress_bar(template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `deskd rebuild` on a served volume: the server runs the job, this polls it. Every poll must
/// be answered within `timeout`; otherwise the rebuild ends here, and the server, hearing no
/// poll, stops the job as well.
fn rebuild_online(
    mut client: Client,
    vol: u32,
    volume: &Path,
    options: &deskd_rebuild::Options,
    show: bool,
    json: bool,
    timeout: std::time::Duration,
) -> ExitCode {
    use deskd_proto::RebuildMode;
    use std::io::Write;
    let mode = match options.mode {
        deskd_rebuild::Mode::Scan => RebuildMode::Scan,
        deskd_rebuild::Mode::Repair => RebuildMode::Repair,
        deskd_rebuild::Mode::Fresh => RebuildMode::Fresh,
    };
    let start = Request::RebuildStart {
        vol,
        mode,
        threads: Some(options.threads as u32),
        force: options.force,
        timeout_secs: timeout.as_secs().max(1) as u32,
    };
    let job = match client.call(start) {
        Ok(Response::RebuildStarted { job }) => job,
        Ok(other) => {
            eprintln!("deskd rebuild: unexpected reply {other:?}");
            return ExitCode::from(2);
        }
        Err(e) => {
            // The server's refusals mostly name the volume already.
            let e = e.to_string();
            let root = format!("{}: ", volume.display());
            if e.starts_with(&root) {
                eprintln!("deskd rebuild: {e}");
            } else {
                eprintln!("deskd rebuild: {root}{e}");
            }
            return ExitCode::from(2);
        }
    };
    let bar = progress_bar("{spinner} deskd: {msg}, {pos} objects walked {elapsed}");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    // A client that shows no lines asks for none.
    let mut from = if show { 0 } else { u64::MAX };
    let interval = (timeout / 4).clamp(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(250),
    );
    let mut more_lines = false;
    let summary = loop {
        // While lines keep coming, fetch the rest at once rather than a piece per interval.
        if !more_lines {
            std::thread::sleep(interval);
        }
        let state = match client.call(Request::RebuildPoll { vol, job, from }) {
            Ok(Response::Rebuild(state)) => state,
            Ok(other) => {
                bar.finish_and_clear();
                eprintln!("deskd rebuild: unexpected reply {other:?}");
                return ExitCode::from(2);
            }
            Err(e) => {
                bar.finish_and_clear();
                let _ = out.flush();
                eprintln!(
                    "deskd rebuild: {}: no answer from deskd within {:.0} s ({e}); the rebuild ended (the server stops its job too)",
                    volume.display(),
                    timeout.as_secs_f64()
                );
                return ExitCode::from(2);
            }
        };
        more_lines = !state.lines.is_empty() && state.finished.is_none();
        if show {
            from = state.next;
        }
        if show {
            for l in &state.lines {
                write_failed |=
                    write_difference(&mut out, json, &l.kind, &l.path, &l.detail).is_err();
            }
        }
        bar.set_position(state.objects);
        bar.set_message(format!("{} (pass {})", state.phase, state.pass));
        match state.finished {
            None => {}
            Some(Ok(summary)) => break summary,
            Some(Err(message)) => {
                bar.finish_and_clear();
                let _ = out.flush();
                eprintln!("deskd rebuild: {}: {message}", volume.display());
                return ExitCode::from(2);
            }
        }
    };
    bar.finish_and_clear();
    let scan = options.mode == deskd_rebuild::Mode::Scan;
    let text = format!(
        "rebuild {} (online, {} pass{}): {}{} objects, {} directories, {} new IDs, {} renumbered duplicates, {} repaired, {} removed, {} left to clients, {:.2}s",
        volume.display(),
        summary.passes,
        if summary.passes == 1 { "" } else { "es" },
        scan_differences(scan, summary.differences),
        summary.counts.objects,
        summary.counts.directories,
        summary.counts.new_ids,
        summary.counts.renumbered,
        summary.counts.repaired,
        summary.counts.removed,
        summary.left,
        summary.millis as f64 / 1000.0
    );
    let json = json.then(|| {
        serde_json::json!({ "summary": {
            "mode": format!("{mode:?}").to_lowercase(),
            "volume": volume.display().to_string(),
            "online": true,
            "objects": summary.counts.objects,
            "directories": summary.counts.directories,
            "new_ids": summary.counts.new_ids,
            "renumbered": summary.counts.renumbered,
            "repaired": summary.counts.repaired,
            "removed": summary.counts.removed,
            "differences": summary.differences,
            "left": summary.left,
            "passes": summary.passes,
            "seconds": summary.millis as f64 / 1000.0,
        }})
    });
    finish_rebuild(
        &mut out,
        json,
        &text,
        scan,
        summary.differences,
        write_failed,
    )
}

/// The end of a rebuild's output — the summary as JSON, as a line on stdout, or with `-s` on
/// stderr and only when something differs (an up-to-date desktop gives no output at all) — and
/// the exit status.
fn finish_rebuild(
    out: &mut impl std::io::Write,
    json: Option<serde_json::Value>,
    text: &str,
    scan: bool,
    differences: u64,
    mut write_failed: bool,
) -> ExitCode {
    if let Some(v) = json {
        write_failed |= writeln!(out, "{v}").is_err();
    } else if !scan {
        write_failed |= writeln!(out, "{text}").is_err();
    } else if differences > 0 {
        eprintln!("{text}");
    }
    if out.flush().is_err() || write_failed {
        eprintln!("deskd rebuild: cannot write the output");
        return ExitCode::from(2);
    }
    if scan && differences > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `-s`'s count at the head of the summary (`3 differences, `); empty for the other modes,
/// whose counts say what they did.
fn scan_differences(scan: bool, differences: u64) -> String {
    match (scan, differences) {
        (false, _) => String::new(),
        (true, 1) => "1 difference, ".to_string(),
        (true, n) => format!("{n} differences, "),
    }
}

/// What an offline rebuild (or a restore) counted, for its summary line.
fn counts_text(c: &deskd_rebuild::Counts) -> String {
    format!(
        "{} objects, {} directories, {} new IDs, {} renumbered duplicates, {} repaired, {} removed",
        c.objects, c.directories, c.new_ids, c.renumbered, c.repaired, c.removed
    )
}

/// `deskd migrate`: errors and refusals are exit status 2.
fn migrate(
    volume: &Path,
    to: &str,
    from: Option<String>,
    password: deskd_pg::PasswordSource,
    name: Option<&str>,
    replace: bool,
) -> ExitCode {
    let to_sqlite = to == "sqlite";
    let refuse = |why: &str| {
        eprintln!("deskd migrate: {why}");
        ExitCode::from(2)
    };
    let target = match (to_sqlite, from) {
        (true, Some(from)) => from,
        (true, None) => return refuse("--to sqlite needs --from TARGET (the PostgreSQL database)"),
        (false, Some(_)) => {
            return refuse(
                "--from is for --to sqlite; into PostgreSQL the desktop comes from the volume",
            )
        }
        (false, None) if replace => {
            return refuse(
                "--replace is for --to sqlite; a volume the database holds already is never \
                 replaced (remove it there first, see docs/deskd.md)",
            )
        }
        (false, None) => to.to_owned(),
    };
    let database = deskd_pg::ConnectOptions { target, password };
    let bar = progress_bar("{spinner} {pos} objects copied ({per_sec}) {elapsed}");
    let progress = |n| bar.set_position(n);
    let result = if to_sqlite {
        deskd_cli::migrate::to_sqlite(volume, name, &database, replace, &progress)
    } else {
        deskd_cli::migrate::to_postgresql(volume, name, &database, &progress)
    };
    bar.finish_and_clear();
    match result {
        Ok(summary) => {
            println!("{}", summary.line(!to_sqlite));
            if to_sqlite {
                // A server still configured with `backend` would serve the database's copy
                // again (older from now on) and mark the root again (newcomer review, stop 40).
                eprintln!(
                    "deskd migrate: take `backend` out of every deskd serve's configuration of \
                     this volume (`backend = \"sqlite\"` in its `[volume.\"PATH\"]` table when \
                     `[defaults]` gives one) before starting them, or reload (SIGHUP) the running \
                     ones: the desktop is its SQLite file now"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => refuse(&e.to_string()),
    }
}

/// `deskd rebuild`; errors are exit status 2, differences found by `-s` status 1.
fn rebuild(volume: &Path, options: &deskd_rebuild::Options, show: bool, json: bool) -> ExitCode {
    use std::io::Write;
    let bar = progress_bar("{spinner} {pos} objects walked ({per_sec}) {elapsed}");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    let result = deskd_rebuild::rebuild(volume, options, &|n| bar.set_position(n), &mut |d| {
        if !show {
            return;
        }
        write_failed |= write_difference(&mut out, json, d.kind, &d.path, &d.detail).is_err();
    });
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = out.flush();
            eprintln!("deskd rebuild: {e}");
            return ExitCode::from(2);
        }
    };
    let scan = options.mode == deskd_rebuild::Mode::Scan;
    let summary = format!(
        "rebuild {}: {}{}, {:.2}s",
        volume.display(),
        scan_differences(scan, report.differences as u64),
        counts_text(&report.counts),
        report.seconds
    );
    let json = json.then(|| serde_json::json!({ "summary": report }));
    finish_rebuild(
        &mut out,
        json,
        &summary,
        scan,
        report.differences as u64,
        write_failed,
    )
}

/// Exit status of a backup error: 1 when a backup (or its copy) fails its checks, else 2.
fn backup_error(verb: &str, e: &deskd_backup::BackupError) -> ExitCode {
    eprintln!("deskd {verb}: {e}");
    match e {
        deskd_backup::BackupError::Invalid(_) => ExitCode::from(1),
        // A refusal (a volume served from a database, ...) is "any other error", as the
        // exit status documented in --help and backup.md says, and as `deskd backup` exits.
        _ => ExitCode::from(2),
    }
}

/// Where `deskd backup` reads `volume`'s desktop: its database when the configuration file
/// `config` puts it in PostgreSQL, else its SQLite file.
fn backup_source(
    volume: &Path,
    config: Option<&Path>,
) -> Result<Option<deskd_cli::pg_admin::PgVolumeRef>, ExitCode> {
    let found = match config.map(|c| deskd_cli::pg_admin::from_config(c, volume)) {
        None => None,
        Some(Ok(found)) => found,
        Some(Err(e)) => {
            eprintln!("deskd backup: {e}");
            return Err(ExitCode::from(2));
        }
    };
    // (A volume marked as served from a database is refused by deskd_backup itself when
    // no database was found for it here: Source::Desktop.)
    Ok(found)
}

/// `deskd backup`.
fn backup(volume: &Path, config: Option<&Path>, dest: &Path, force: bool, json: bool) -> ExitCode {
    let started = std::time::Instant::now();
    let mut pg = match backup_source(volume, config) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    let mut source = match pg.as_mut() {
        Some(pg) => deskd_backup::Source::Export(pg),
        None => deskd_backup::Source::Desktop,
    };
    let result = with_page_bar(|progress| {
        deskd_backup::backup_from(volume, &mut source, dest, force, progress)
    });
    match result {
        Ok((path, m)) => {
            if json {
                print_manifest(&m);
            } else {
                println!(
                    "backup {}: {} objects, last ID {}, {} bytes, integrity ok, {:.2}s -> {}",
                    m.volume,
                    m.desktop_info.objects,
                    m.desktop_info.last_id,
                    m.bytes,
                    started.elapsed().as_secs_f64(),
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => backup_error("backup", &e),
    }
}

/// `deskd backup VOLUME -`: the checked copy on standard output, the summary (or with `--json`
/// the manifest) on standard error, and the manifest in `manifest` when given.
fn backup_to_stdout(
    volume: &Path,
    config: Option<&Path>,
    json: bool,
    manifest: Option<&deskd_backup::ManifestTarget>,
) -> ExitCode {
    let mut pg = match backup_source(volume, config) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    let mut source = match pg.as_mut() {
        Some(pg) => deskd_backup::Source::Export(pg),
        None => deskd_backup::Source::Desktop,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = with_page_bar(|progress| {
        deskd_backup::backup_to_stream_from(volume, &mut source, &mut out, manifest, progress)
    });
    match result {
        Ok(m) if json => {
            eprintln!(
                "{}",
                serde_json::to_string(&m).expect("a manifest serialises")
            );
            ExitCode::SUCCESS
        }
        Ok(m) => {
            let manifest = manifest
                .map(|t| format!(", manifest {}", t.path.display()))
                .unwrap_or_default();
            eprintln!(
                "backup {}: {} objects, last ID {}, {} bytes, sha256 {}, integrity ok -> standard output{manifest}",
                m.volume, m.desktop_info.objects, m.desktop_info.last_id, m.bytes, m.sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_error("backup", &e),
    }
}

/// Run a backup with a progress bar of the pages copied (drawn only on a terminal).
fn with_page_bar<T>(backup: impl FnOnce(&mut dyn FnMut(u64, u64)) -> T) -> T {
    let bar = progress_bar("{spinner} {pos}/{len} pages copied {elapsed}");
    let result = backup(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    result
}

/// A backup's manifest as one JSON line.
fn print_manifest(m: &deskd_backup::Manifest) {
    println!(
        "{}",
        serde_json::to_string(m).expect("a manifest serialises")
    );
}

/// `deskd verify`.
fn verify(backup: &Path, manifest: Option<&Path>, json: bool) -> ExitCode {
    let checked = match manifest {
        Some(path) => deskd_backup::verify_with(backup, path),
        None => deskd_backup::verify(backup),
    };
    match checked {
        Ok(m) => {
            if json {
                print_manifest(&m);
            } else {
                println!(
                    "{}: good: the desktop of {} as of {}, {} objects, last ID {}",
                    backup.display(),
                    m.volume,
                    ctime_string(m.started),
                    m.desktop_info.objects,
                    m.desktop_info.last_id
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => backup_error("verify", &e),
    }
}

/// `deskd restore`.
fn restore(
    backup: &Path,
    volume: &Path,
    options: &deskd_backup::RestoreOptions,
    show: bool,
    json: bool,
) -> ExitCode {
    use std::io::Write;
    let bar = progress_bar("{spinner} {pos} objects walked ({per_sec}) {elapsed}");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    let result = deskd_backup::restore(
        backup,
        volume,
        options,
        &|n| bar.set_position(n),
        &mut |d| {
            if show {
                write_failed |=
                    write_difference(&mut out, json, d.kind, &d.path, &d.detail).is_err();
            }
        },
    );
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = out.flush();
            return backup_error("restore", &e);
        }
    };
    if json {
        write_failed |= writeln!(out, "{}", serde_json::json!({ "restore": report })).is_err();
    } else {
        write_failed |= writeln!(
            out,
            "restore {} from {}: {}; IDs continue after {}; {:.2}s",
            report.rebuild.volume,
            report.backup,
            counts_text(&report.rebuild.counts),
            report.last_id,
            report.rebuild.seconds
        )
        .is_err();
    }
    if out.flush().is_err() || write_failed {
        eprintln!("deskd restore: cannot write the output");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
