//! `prov-backup -c SERVICE.conf [-g GLOBAL.conf] [-d] [-r] [--check-config]`: the backup-account
//! provisioning daemon. Runs in the foreground; SIGTERM or SIGINT finish the entries in hand and
//! exit 0. `--check-config` reads the files, says what it would do, and exits.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prov_backup::config::Config;
use prov_backup::daemon::Daemon;

/// Provision rsnapshot backup accounts from LDAP (add, modify, delete), reporting each step
/// back into the account's entry.
#[derive(Parser, Debug)]
#[command(name = "prov-backup", version)]
struct Args {
    /// The service configuration (INI: [Global], [Database], [Service], [Backup]).
    #[arg(short = 'c', long = "config", value_name = "SERVICE.conf")]
    config: PathBuf,
    /// The global configuration (INI: [Global] SLEEP/ATTEMPTS for connecting,
    /// [Operation Mode] SLEEP/ATTEMPTS for reconnecting).
    #[arg(short = 'g', long = "global", value_name = "GLOBAL.conf")]
    global: Option<PathBuf>,
    /// Also write every log line to stdout.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Dry run: print every action (DRY-RUN:  …) and change nothing, on disk or in LDAP.
    #[arg(short = 'r', long = "dry-run")]
    dry_run: bool,
    /// Check the configuration files and exit (0: good, with what the daemon would do; 2: the
    /// first problem, naming file, section and key). Needs no LDAP server, takes no lock.
    #[arg(long = "check-config", conflicts_with_all = ["debug", "dry_run"])]
    check_config: bool,
}

fn main() -> ExitCode {
    deskd_docgen::handle_generate(<Args as clap::CommandFactory>::command);
    let args = Args::parse();
    let config = match Config::load(&args.config, args.global.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("prov-backup: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        let global = match &args.global {
            Some(path) => path.display().to_string(),
            None => "none (-g), the default retry policies".to_owned(),
        };
        println!(
            "{}: good (global file: {global})\n{}",
            args.config.display(),
            config.describe()
        );
        if config.database.password_in_clear() {
            eprintln!(
                "prov-backup: warning: {}: ADMIN_PASSWORD would cross the network unencrypted; \
                 use ldaps://, START_TLS = 1, or ldapi:// on the LDAP host",
                config.database.url
            );
        }
        return ExitCode::SUCCESS;
    }
    prov_backup::log::init(config.log, &config.syslog, args.debug);
    if config.database.password_in_clear() {
        tracing::warn!(
            "{}: ADMIN_PASSWORD crosses the network unencrypted; use ldaps://, START_TLS = 1, \
             or ldapi:// on the LDAP host",
            config.database.url
        );
    }
    let _lock = match prov_backup::lock::acquire(&config.backup.lock_file) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("prov-backup: {e}");
            return ExitCode::from(1);
        }
    };
    let service = format!("{} {}", config.service, config.kind);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("prov-backup: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let starting = format!(
        "Starting {service} provisioning{}",
        if args.dry_run { " (dry run)" } else { "" }
    );
    let dry_run = args.dry_run;
    let result = runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stop requested: finishing the entries in hand");
            prov_backup::daemon::notify_systemd(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("finishing the entries in hand"),
            ]);
            let _ = stop_tx.send(true);
        });
        tracing::info!("{starting}");
        Daemon::new(config, dry_run, stop_rx)?.run().await
    });
    match result {
        Ok(()) => {
            tracing::info!("Stopping {service} provisioning script");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("prov-backup: {e:#}");
            ExitCode::from(1)
        }
    }
}
