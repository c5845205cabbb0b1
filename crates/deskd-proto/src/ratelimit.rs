//! Saying something at most once per interval, for the server's and the bridge's logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Says something at most once per interval, so a flood cannot fill the log.
pub struct RateLimited {
    last: Mutex<Option<Instant>>,
    every: Duration,
}

impl RateLimited {
    /// At most once per `every`; `const` so that it can be a `static` at the call site.
    pub const fn new(every: Duration) -> RateLimited {
        RateLimited {
            last: Mutex::new(None),
            every,
        }
    }

    /// Whether to say it now (and remember that it was said).
    pub fn now(&self) -> bool {
        let mut last = self.last.lock().unwrap();
        if matches!(*last, Some(t) if t.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
