//! The write transaction of a [`crate::Batch`]: `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` run
//! from the connection's statement cache. `rusqlite::Transaction` parses each of them anew
//! (`execute_batch`), and a lone afpd ADD is one transaction: with the counter's `meta` row,
//! three statements parsed per ADD, about a tenth of its time on the serving thread
//! (docs/PERFORMANCE.md, "A directory's ADD"). Dropping the transaction uncommitted rolls it
//! back, as `rusqlite::Transaction` does by default.

use std::ops::Deref;

use rusqlite::Connection;

/// An open `BEGIN IMMEDIATE` transaction on a borrowed connection.
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
    /// Still to be committed or rolled back.
    open: bool,
}

impl<'c> WriteTx<'c> {
    /// Begin: take the write lock now (the connection's busy timeout applies).
    pub(crate) fn begin_immediate(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(WriteTx { conn, open: true })
    }

    /// Commit. On failure the transaction is rolled back when dropped.
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // SQLite may have ended the transaction itself (some errors roll back on their own).
        if self.open && !self.conn.is_autocommit() {
            let rolled_back = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
            if let Err(e) = rolled_back {
                tracing::error!("rolling back a write transaction failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_committed_transaction_keeps_its_rows_and_a_dropped_one_none() {
        let conn = table();
        for _ in 0..3 {
            let tx = WriteTx::begin_immediate(&conn).unwrap();
            tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(rows(&conn), 3);
        let tx = WriteTx::begin_immediate(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        drop(tx);
        assert!(
            conn.is_autocommit(),
            "rolled back, no transaction left open"
        );
        assert_eq!(rows(&conn), 3);
        // The cached statements run again after a rollback.
        let tx = WriteTx::begin_immediate(&conn).unwrap();
        tx.commit().unwrap();
        assert!(conn.is_autocommit());
    }
}
