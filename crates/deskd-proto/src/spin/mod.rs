//! A socket reader that polls briefly before it sleeps, while polling pays.
//!
//! Waking a thread that sleeps in `read(2)` costs tens of microseconds on virtual machines (on
//! the project's VM a bare cross-process round trip takes ~57 µs that way, ~5 µs when the reader
//! is already awake). [`SpinRead`] may first poll with `recv(MSG_DONTWAIT)` for a short window
//! and only then block, so a message that follows quickly on the previous one is read without a
//! wake-up. Whether and how long it polls is the [`Rule`] (`$DESKD_SPIN`) within the window
//! (`$DESKD_SPIN_US`, default 100 µs; 0 turns polling off), read once per process
//! ([`Settings::configured`]).
//!
//! The default rule, [`Rule::Adaptive`], polls only while polling has been paying on that
//! connection ([`pays`]): on a loaded machine a poll that waits in vain takes the CPU from the
//! peer it waits for, when that peer sleeps in `read(2)` (afpd, the Netatalk bridge, a client
//! with polling off): GET through the bridge went from ~17 to ~217 µs p50 that way with
//! compilers running. The older rules stay as overrides: `always`, `never`, and `load` (poll
//! only while no thread waits for a CPU, [`contention`]).
//!
//! Blocking reads keep the socket's read timeout; while a deadline is set
//! ([`SpinRead::set_deadline`]), a blocking read that would end after it fails with
//! [`io::ErrorKind::TimedOut`] instead.

pub mod contention;
pub mod pays;

use crate::Stream;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The polling window when `$DESKD_SPIN_US` is not set.
pub const DEFAULT_SPIN_US: u64 = 100;
/// The longest window `$DESKD_SPIN_US` may ask for.
pub const MAX_SPIN_US: u64 = 10_000;

/// When a reader polls before it blocks (`$DESKD_SPIN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// While nearly all of the connection's recent polls paid; otherwise sleep, probing now
    /// and then ([`pays`]). The default.
    Adaptive,
    /// Every time, for the whole window.
    Always,
    /// While no thread waits for a CPU ([`contention::busy`]); `$DESKD_SPIN_ADAPT=1` of
    /// earlier versions.
    Load,
    /// Never: every read blocks at once.
    Never,
}

impl Rule {
    /// The rule named `name` (`adaptive`, `always`, `load`, `never`).
    pub fn parse(name: &str) -> Option<Rule> {
        match name.trim() {
            "adaptive" => Some(Rule::Adaptive),
            "always" => Some(Rule::Always),
            "load" => Some(Rule::Load),
            "never" => Some(Rule::Never),
            _ => None,
        }
    }
}

/// A `$DESKD_SPIN*` variable that says nothing this version understands.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {expected}")]
pub struct SettingsError {
    /// The variable's name.
    pub variable: &'static str,
    /// What it said.
    pub value: String,
    /// What it may say.
    pub expected: &'static str,
}

/// The polling rule and window of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// When to poll.
    pub rule: Rule,
    /// The longest poll; zero means [`Rule::Never`] whatever the rule says.
    pub window: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            rule: Rule::Adaptive,
            window: Duration::from_micros(DEFAULT_SPIN_US),
        }
    }
}

impl Settings {
    /// The settings from the environment, or what is wrong with it.
    pub fn from_env() -> Result<Settings, SettingsError> {
        let var = |name| std::env::var(name).ok();
        Settings::from_vars(
            var("DESKD_SPIN").as_deref(),
            var("DESKD_SPIN_US").as_deref(),
            var("DESKD_SPIN_ADAPT").as_deref(),
        )
    }

    /// The settings from the values of `$DESKD_SPIN`, `$DESKD_SPIN_US` and the older
    /// `$DESKD_SPIN_ADAPT` (`1`: the `load` rule, when `$DESKD_SPIN` does not name one).
    pub fn from_vars(
        rule: Option<&str>,
        window_us: Option<&str>,
        adapt: Option<&str>,
    ) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        if let Some(us) = window_us {
            let us = us
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&us| us <= MAX_SPIN_US)
                .ok_or_else(|| SettingsError {
                    variable: "DESKD_SPIN_US",
                    value: us.to_owned(),
                    expected: "a number of microseconds from 0 (no polling) to 10000",
                })?;
            settings.window = Duration::from_micros(us);
        }
        match (rule, adapt.map(str::trim)) {
            (Some(name), _) => {
                settings.rule = Rule::parse(name).ok_or_else(|| SettingsError {
                    variable: "DESKD_SPIN",
                    value: name.to_owned(),
                    expected: "adaptive, always, load or never",
                })?;
            }
            (None, Some("1")) => settings.rule = Rule::Load,
            (None, Some("0" | "")) | (None, None) => {}
            (None, Some(other)) => {
                return Err(SettingsError {
                    variable: "DESKD_SPIN_ADAPT",
                    value: other.to_owned(),
                    expected: "1 (the same as DESKD_SPIN=load) or 0",
                })
            }
        }
        if settings.window.is_zero() {
            settings.rule = Rule::Never;
        }
        Ok(settings)
    }

    /// This process's settings, read once; the defaults where the environment is wrong
    /// (programs that take requests check [`Settings::from_env`] at start and refuse it).
    pub fn configured() -> Settings {
        static CONFIGURED: OnceLock<Settings> = OnceLock::new();
        *CONFIGURED.get_or_init(|| Settings::from_env().unwrap_or_default())
    }
}

/// Reads from a stream, polling before a blocking read as [`Settings`] say.
pub struct SpinRead {
    stream: Stream,
    settings: Settings,
    pays: pays::Pays,
    deadline: Option<Instant>,
}

impl SpinRead {
    /// Reads from `stream`, polling as `settings` say ([`Settings::configured`] gives this
    /// process's).
    pub fn new(stream: Stream, settings: Settings) -> SpinRead {
        SpinRead {
            stream,
            settings,
            pays: pays::Pays::default(),
            deadline: None,
        }
    }

    /// Bound every later read by `deadline` (None: no bound). A server sets one while a frame
    /// has started to arrive, so a peer cannot hold a half-sent frame open.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// How long to poll before this read blocks (zero: not at all).
    fn poll_for(&self) -> Duration {
        let window = self.settings.window;
        match self.settings.rule {
            Rule::Never => Duration::ZERO,
            Rule::Always => window,
            Rule::Load if contention::busy() => Duration::ZERO,
            Rule::Load => window,
            Rule::Adaptive => match self.pays.plan() {
                pays::Plan::Poll => window,
                pays::Plan::Sleep => Duration::ZERO,
            },
        }
    }

    /// Poll for `window`: Some(bytes) when a message (or the end of the stream) came.
    fn poll(&mut self, buf: &mut [u8], window: Duration) -> io::Result<Option<usize>> {
        let start = Instant::now();
        loop {
            match rustix::net::recv(&self.stream, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((n, _)) => {
                    self.pays.polled(true);
                    return Ok(Some(n));
                }
                Err(rustix::io::Errno::AGAIN) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() >= window {
                return Ok(None);
            }
            std::hint::spin_loop();
        }
    }

    /// The blocking read, bounded by the deadline when one is set.
    fn block(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            crate::deadline::wait_readable(self.stream.as_fd(), deadline)?;
        }
        self.stream.read(buf)
    }
}

impl Read for SpinRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let window = self.poll_for();
        if window.is_zero() {
            self.pays.slept();
            return self.block(buf);
        }
        if let Some(n) = self.poll(buf, window)? {
            return Ok(n);
        }
        // The window ran out: how much later the message comes tells a peer held back from a
        // peer that paused.
        let gave_up = Instant::now();
        let n = self.block(buf)?;
        if n > 0 {
            self.pays.ran_out(gave_up.elapsed(), window);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn always(us: u64) -> Settings {
        Settings {
            rule: Rule::Always,
            window: Duration::from_micros(us),
        }
    }

    #[test]
    fn reads_what_was_written_and_sees_eof() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = SpinRead::new(Stream::Unix(a), always(50));
        b.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Data that arrives after the window is still read (blocking).
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.write_all(b"late").unwrap();
        });
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late");
        writer.join().unwrap();
        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0, "end of stream");
    }

    #[test]
    fn read_timeout_still_applies() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let mut r = SpinRead::new(Stream::Unix(a), always(100));
        let err = r.read(&mut [0u8; 1]).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn the_run_queue_is_read_from_loadavg() {
        assert_eq!(
            contention::runnable(b"0.52 0.58 0.59 3/467 12345\n"),
            Some(3)
        );
        assert_eq!(contention::runnable(b"0.52 0.58 0.59 12/467 1\n"), Some(12));
        assert_eq!(contention::runnable(b"garbage"), None);
        assert_eq!(contention::runnable(b"0.1 0.2 0.3 x/4 5"), None);
        assert_eq!(contention::runnable(b"\xff\xfe"), None);
    }

    #[test]
    fn polling_stops_only_when_threads_wait_for_a_cpu() {
        // The reader and its peer on 2 CPUs: nobody waits.
        assert!(!contention::waiting(2, 2));
        // Two busy loops beside them: two wait.
        assert!(contention::waiting(4, 2));
        assert!(contention::waiting(2, 1));
        assert!(!contention::waiting(1, 1));
    }

    #[test]
    fn the_environment_names_the_rule_and_the_window() {
        let defaults = Settings::from_vars(None, None, None).unwrap();
        assert_eq!(defaults, Settings::default());
        assert_eq!(defaults.rule, Rule::Adaptive);
        assert_eq!(defaults.window, Duration::from_micros(100));
        let s = Settings::from_vars(Some("always"), Some("250"), None).unwrap();
        assert_eq!(
            (s.rule, s.window),
            (Rule::Always, Duration::from_micros(250))
        );
        // A zero window is no polling, whatever the rule.
        let s = Settings::from_vars(Some("adaptive"), Some("0"), None).unwrap();
        assert_eq!(s.rule, Rule::Never);
        // The older switch still selects the load rule; DESKD_SPIN wins over it.
        assert_eq!(
            Settings::from_vars(None, None, Some("1")).unwrap().rule,
            Rule::Load
        );
        assert_eq!(
            Settings::from_vars(None, None, Some("0")).unwrap().rule,
            Rule::Adaptive
        );
        let s = Settings::from_vars(Some("never"), None, Some("1")).unwrap();
        assert_eq!(s.rule, Rule::Never);
        for (rule, us, adapt, variable) in [
            (Some("sometimes"), None, None, "DESKD_SPIN"),
            (None, Some("-1"), None, "DESKD_SPIN_US"),
            (None, Some("10001"), None, "DESKD_SPIN_US"),
            (None, Some("lots"), None, "DESKD_SPIN_US"),
            (None, None, Some("yes"), "DESKD_SPIN_ADAPT"),
        ] {
            let e = Settings::from_vars(rule, us, adapt).unwrap_err();
            assert_eq!(e.variable, variable, "{e}");
        }
    }

    #[test]
    fn adaptive_reads_still_see_every_byte() {
        // Whatever the rule decides, nothing is lost: late and early bytes alike.
        let (a, mut b) = UnixStream::pair().unwrap();
        let settings = Settings {
            rule: Rule::Adaptive,
            window: Duration::from_micros(30),
        };
        let mut r = SpinRead::new(Stream::Unix(a), settings);
        let writer = std::thread::spawn(move || {
            for i in 0..40u8 {
                if i % 3 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                b.write_all(&[i]).unwrap();
            }
        });
        let mut got = [0u8; 40];
        r.read_exact(&mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, &v)| v as usize == i));
        writer.join().unwrap();
    }

    #[test]
    fn this_machine_says_how_busy_it_is() {
        // Sampled, then answered from the sample (no panic, whatever the load).
        contention::busy();
        contention::busy();
        let text = std::fs::read("/proc/loadavg").expect("Linux has /proc/loadavg");
        assert!(contention::runnable(&text).is_some(), "{text:?}");
    }
}
