//! The statements that read or delete rows by a list of IDs keep one probe of the primary key
//! an ID under a *generic* plan made while the table was nearly empty (what PostgreSQL caches
//! for a prepared statement after its first runs). `vid = $1 AND id = ANY($2)` got a plan
//! that read the volume's every row through the `(vid, parent, name)` index and filtered them:
//! with two servers, one's catch-up of the other's 50,000 new rows took up to 1.1 s a call
//! (docs/PERFORMANCE.md, "Two servers"). A server therefore takes the statistics itself as
//! the volume grows (`PgDesktop::refresh_statistics`), and those statements are written so
//! that the primary key is the plan once the statistics say the table is not tiny.

use deskd_db::{Durability, Kind, NewObject, ROOT_ID};
use deskd_pg::store::{DELETE_ROWS_OF_IDS, ROWS_OF_IDS};
use deskd_pg::test_cluster::TestCluster;
use deskd_pg::{connect, ConnectOptions, PasswordSource, PgDesktop, VolumeKey};

/// The generic plan of `sql` (parameters: the volume, an array of IDs), as EXPLAIN prints it.
fn generic_plan(admin: &mut postgres::Client, sql: &str) -> String {
    admin
        .batch_execute("SET plan_cache_mode = force_generic_plan; DEALLOCATE ALL")
        .unwrap();
    admin
        .batch_execute(&format!("PREPARE q(bigint, bigint[]) AS {sql}"))
        .unwrap();
    let rows = admin
        .query("EXPLAIN EXECUTE q(1, ARRAY[17, 18, 19]::bigint[])", &[])
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn file(name: String) -> NewObject {
    NewObject {
        parent: ROOT_ID,
        name: name.into_bytes(),
        kind: Kind::File,
        dev: 1,
        ino: 1,
        type_code: [0; 4],
        creator: [0; 4],
        flags: 0,
        ctime: 0,
        hint: None,
    }
}

/// How many times a session (not autovacuum) took the objects' statistics.
fn analyzed(admin: &mut postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT analyze_count FROM pg_stat_user_tables
             WHERE schemaname = 'deskd' AND relname = 'objects'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// A new volume `name` in a database of its own on `cluster`, opened as a server opens it, and
/// a superuser session on that database; autovacuum is off for the deskd tables there (it would
/// take the statistics too, within its naptime).
fn volume_without_autovacuum(
    cluster: &TestCluster,
    name: &str,
    identity: u64,
) -> (PgDesktop, postgres::Client) {
    cluster.create_database(name);
    let options = ConnectOptions {
        target: cluster.url(name),
        password: PasswordSource::File(
            cluster.password_file(&format!("pw-{name}"), cluster.password()),
        ),
    };
    let key = VolumeKey {
        name: name.into(),
        identity,
    };
    let (desktop, _) =
        PgDesktop::open(connect(&options).unwrap(), &key, Durability::Normal).unwrap();
    let mut admin = cluster.admin(name);
    admin
        .batch_execute(
            "ALTER TABLE deskd.objects SET (autovacuum_enabled = false);
             ALTER TABLE deskd.changes SET (autovacuum_enabled = false)",
        )
        .unwrap();
    (desktop, admin)
}

#[test]
fn statistics_are_taken_as_the_volume_grows_and_reads_by_ids_probe_the_primary_key() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let (mut desktop, mut admin) = volume_without_autovacuum(&cluster, "plans", 0x9e4);
    let mut add = |range: std::ops::Range<u32>| {
        let mut batch = desktop.batch().unwrap();
        for n in range {
            batch.add(&file(format!("f{n}"))).unwrap();
        }
        batch.commit().unwrap();
        // The batch after the counter passed a mark takes them first.
        desktop.batch().unwrap().commit().unwrap();
    };
    add(0..900);
    assert_eq!(analyzed(&mut admin), 0, "statistics taken below 1,000 IDs");
    add(900..1_100);
    assert_eq!(
        analyzed(&mut admin),
        1,
        "no statistics taken past 1,000 IDs"
    );
    add(1_100..2_000);
    assert_eq!(
        analyzed(&mut admin),
        1,
        "statistics taken again before twice as many"
    );
    add(2_000..20_000);
    assert_eq!(
        analyzed(&mut admin),
        2,
        "no statistics taken past twice as many"
    );

    // With them, a read or delete of a few IDs is one probe of the primary key an ID.
    for sql in [
        format!("SELECT o.id FROM {ROWS_OF_IDS}"),
        DELETE_ROWS_OF_IDS.to_owned(),
    ] {
        let plan = generic_plan(&mut admin, &sql);
        assert!(
            plan.contains("Scan using objects_pkey on objects")
                && plan.contains("Index Cond: ((vid = $1) AND (id = ")
                && !plan.contains("Seq Scan on objects")
                && !plan.contains("objects_vid_parent_name_key"),
            "not one probe of the primary key an ID:\n{sql}\n{plan}"
        );
    }
}

/// ANALYZE waits for the lock a VACUUM (an anti-wraparound one is not cancelled for it), a
/// `CREATE INDEX CONCURRENTLY` or another session's ANALYZE holds on the tables every volume
/// of the database shares; the statistics are then skipped, and the writer's batch starts
/// (it waited for as long as the lock was held: the hostile review of stop 43).
#[test]
fn statistics_are_skipped_while_another_session_holds_their_lock() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let (mut desktop, mut admin) = volume_without_autovacuum(&cluster, "plans_lock", 0x9e5);
    let mut batch = desktop.batch().unwrap();
    for n in 0..1_100 {
        batch.add(&file(format!("f{n}"))).unwrap();
    }
    batch.commit().unwrap();
    // What a VACUUM or another ANALYZE holds while it runs.
    let mut holder = cluster.admin("plans_lock");
    let mut held = holder.transaction().unwrap();
    held.batch_execute("LOCK TABLE deskd.objects IN SHARE UPDATE EXCLUSIVE MODE")
        .unwrap();
    let (done, started) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            // The first batch past 1,000 IDs takes the statistics first.
            let batch = desktop.batch().map(|b| b.commit().map(|_| ()));
            let _ = done.send(batch.is_ok());
        });
        let began = started.recv_timeout(std::time::Duration::from_secs(10));
        // Let a writer that waits go, so that the test ends either way.
        held.rollback().unwrap();
        assert_eq!(
            began,
            Ok(true),
            "the batch waited for ANALYZE's lock (held by another session)"
        );
    });
    assert_eq!(
        analyzed(&mut admin),
        0,
        "statistics taken under another's lock"
    );
}
