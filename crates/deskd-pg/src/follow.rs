//! Following the other servers of a volume: `LISTEN deskd_changes` on a connection of its own.
//!
//! Every batch that changed a volume sends `NOTIFY deskd_changes, 'vid:seq'` with its commit
//! ([`crate::PgBatch::commit`]). A notice is only a wake-up: the change log
//! ([`crate::PgDesktop::changes_since`]) is the truth, so a notice lost with a connection, or a
//! forged one from another database user, costs at most a poll or a needless read, never a
//! missed change.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::error::Result;

/// The channel the commits notify on.
pub const CHANNEL: &str = "deskd_changes";

/// A committed batch another connection announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The volume's key in the database ([`crate::PgDesktop::volume_key_in_db`]).
    pub vid: i64,
    /// The batch's number in that volume.
    pub seq: u64,
}

/// A connection that listens for committed batches.
pub struct ChangeListener {
    client: Client,
}

impl ChangeListener {
    /// Listen on `client` (a connection of its own: it must not be in a transaction).
    pub fn start(mut client: Client) -> Result<ChangeListener> {
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(ChangeListener { client })
    }

    /// The notices that arrive within `timeout` (all that are waiting once one has come);
    /// empty when none came. Payloads that are not `vid:seq` are dropped.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Notice>> {
        let mut notices = Vec::new();
        let mut notifications = self.client.notifications();
        let first = notifications.timeout_iter(timeout).next()?;
        let Some(first) = first else {
            return Ok(notices);
        };
        notices.extend(parse(first.payload()));
        let mut waiting = notifications.iter();
        while let Some(more) = waiting.next()? {
            notices.extend(parse(more.payload()));
        }
        Ok(notices)
    }
}

/// `vid:seq`, or nothing for any other text.
fn parse(payload: &str) -> Option<Notice> {
    let (vid, seq) = payload.split_once(':')?;
    Some(Notice {
        vid: vid.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vid_colon_seq_is_a_notice() {
        assert_eq!(parse("3:17"), Some(Notice { vid: 3, seq: 17 }));
        for junk in ["", "3", "3:", ":4", "a:1", "1:-2", "1:2:3"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }
}
