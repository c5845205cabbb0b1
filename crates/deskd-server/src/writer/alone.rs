//! A lone write committed by the thread that read it.
//!
//! Handing a write to the writer thread costs a thread wake-up, and on a virtual machine with
//! an idle second vCPU that wake-up (of the order of 100 µs) is most of an ADD's time through
//! the Netatalk bridge (docs/PERFORMANCE.md). So when the writer is idle (its lock is free and
//! nothing waits in its queue), the connection thread takes the writer and commits the write
//! itself, with the same code the writer thread runs ([`Writer::commit_batch`]): same checks,
//! same space rule, same audit line, same reply. When the writer is busy, the write is queued
//! as before and group commit gathers it with the others; so under load nothing changes, and a
//! lone write never waits for a thread to wake.
//!
//! The caller keeps a connection's writes in order: it commits a write here only when none of
//! the connection's earlier writes still waits in the queue.

use std::time::Instant;

use crossbeam_channel::Sender;
use deskd_proto::Request;

use super::{Job, Pending, Replier, WriterShare};

impl WriterShare {
    /// Commit `request` now on this thread when the writer is idle; otherwise give it back to
    /// be queued. Writes that a busy spell (another process holding the desktop's write lock)
    /// keeps waiting are queued for the writer thread, which tries them again.
    pub(crate) fn commit_alone(
        &self,
        request: Request,
        reply: Replier,
        queue: &Sender<Job>,
    ) -> Result<(), (Request, Replier)> {
        // The writer thread is serving a batch or a job: let group commit take this one too.
        if !queue.is_empty() {
            return Err((request, reply));
        }
        // A PostgreSQL volume's writes all go to its writer thread.
        let Some(shared) = &self.0 else {
            return Err((request, reply));
        };
        let Ok(mut writer) = shared.try_lock() else {
            return Err((request, reply));
        };
        // No desktop (closed, or served read-only for want of space) or writes waiting for a
        // busy desktop: the writer thread answers, in order.
        if writer.desktop.is_none() || writer.busy.is_some() || !queue.is_empty() {
            return Err((request, reply));
        }
        let mut writes = vec![Pending {
            request,
            reply,
            queued: Instant::now(),
        }];
        writer.commit_batch(&mut writes);
        let wake = writer.needs_wake();
        if wake {
            // Asked once: until the thread has set its timer, no other commit asks again.
            writer.sleeping_until = None;
        }
        drop(writer);
        for Pending { request, reply, .. } in writes {
            // A busy spell began: the writer thread retries (its deadline says when).
            let _ = queue.send(Job::Write { request, reply });
        }
        if wake {
            let _ = queue.send(Job::Tick);
        }
        Ok(())
    }
}

impl super::Writer {
    /// Whether the sleeping writer thread must wake to set its timers: after a commit made on
    /// another thread, its next deadline (a flush, an idle close, a busy retry) comes before the
    /// one it sleeps until. A thread that is not asleep sets them anyway when it next waits.
    fn needs_wake(&self) -> bool {
        match (self.sleeping_until, self.next_deadline()) {
            (Some(None), Some(_)) => true,
            (Some(Some(until)), Some(next)) => next < until,
            _ => false,
        }
    }
}
