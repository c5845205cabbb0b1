//! Logging as the original does it: syslog (ident `prov-backup`, facility local0, with the pid)
//! with every message prefixed by `[Service] SYSLOG`, each level switched on or off by LOG_*,
//! and with `-d` the same lines on stdout as `LEVEL:  text`.

use std::fmt::Write as _;
use std::io::Write as _;

use nix::syslog::{openlog, syslog, Facility, LogFlags, Severity};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::config::LogLevels;

struct Logger {
    levels: LogLevels,
    prefix: String,
    stdout: bool,
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Logger {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("prov_backup") {
            return;
        }
        let level = *meta.level();
        let (on, priority, name) = match level {
            Level::ERROR => (self.levels.err, Severity::LOG_ERR, "ERROR"),
            Level::WARN => (self.levels.warning, Severity::LOG_WARNING, "WARNING"),
            Level::INFO => (self.levels.info, Severity::LOG_INFO, "INFO"),
            _ => (self.levels.debug, Severity::LOG_DEBUG, "DEBUG"),
        };
        if !on {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        let line = format!("{}:  {}", self.prefix, m.0);
        // nix passes the line through a constant "%s" format; a NUL inside would end it.
        let _ = syslog(priority, line.replace('\0', " ").as_str());
        // A dry run's action is on stdout already (`dry_run`): with -d it came twice.
        if self.stdout && meta.target() != DRY_RUN_TARGET {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{name}:  {}", m.0);
            let _ = out.flush();
        }
    }
}

/// The target of a dry run's log lines: syslog records each action, stdout has it from
/// [`dry_run`] only.
pub const DRY_RUN_TARGET: &str = "prov_backup::dry_run";

/// Prints one line of a dry run's report on stdout. A reader that went away (`--dry-run |
/// head`) must not end the run with a panic in one task and carry on in the others, so write
/// errors are ignored, as for the `-d` log lines.
pub fn dry_run(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "DRY-RUN:  {line}");
    let _ = out.flush();
}

/// Installs the logger for the whole process.
pub fn init(levels: LogLevels, prefix: &str, stdout: bool) {
    // openlog keeps the ident pointer: nix takes it only as a static C string.
    let _ = openlog(
        Some(c"prov-backup"),
        LogFlags::LOG_NDELAY | LogFlags::LOG_PID,
        Facility::LOG_LOCAL0,
    );
    let logger = Logger {
        levels,
        prefix: prefix.to_owned(),
        stdout,
    };
    let _ = tracing_subscriber::registry().with(logger).try_init();
}
