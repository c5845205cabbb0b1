//! prov-backup against a real slapd (with syncprov unless said otherwise) and real rsnapshot.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

const EXAMPLE_UID: &str = "4000123";

fn configtest(conf: &std::path::Path) -> String {
    let out = Command::new("rsnapshot")
        .arg("-c")
        .arg(conf)
        .arg("configtest")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn add_modify_delete_through_their_states() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    // Someone else's data in the backup root must survive the delete.
    std::fs::write(setup.root.join("keep-me"), "x").unwrap();
    let mut daemon = setup.start(&[]);
    let dn = account_dn(EXAMPLE_UID);

    // add (the example entry asks for it) -> adding -> added with a timestamp.
    let e = slapd.wait_for(&dn, "added", is_stamp);
    assert_eq!(e["sstProvisioningReturnValue"], "0");
    daemon.wait_log(&format!("{dn}: adding"));
    let home = setup.home(EXAMPLE_UID);
    for (sub, uid, mode) in [
        ("incoming", 4000123, 0o700),
        (".ssh", 4000123, 0o700),
        (".sepiola_backup", 4000123, 0o700),
        (".snapshots", 0, 0o750),
    ] {
        let m = std::fs::symlink_metadata(home.join(sub)).unwrap();
        assert!(m.is_dir(), "{sub}");
        assert_eq!((m.uid(), m.gid()), (uid, 4000123), "{sub}");
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{sub}");
    }
    let conf = setup.conf_dir.join("4000123.conf");
    assert!(configtest(&conf).contains("Syntax OK"));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains("retain\tdaily\t7\nretain\tweekly\t4\nretain\tmonthly\t3\n"),
        "{text}"
    );
    assert!(
        !text.contains("hourly") && !text.contains("yearly"),
        "{text}"
    );
    assert!(text.contains(&format!("snapshot_root\t{}/.snapshots/\n", home.display())));
    assert!(text.contains(&format!("backup\t{}/incoming/\t./\t", home.display())));
    assert!(text.contains("no_create_root\t1\n") && text.contains("sync_first\t1\n"));
    // No quotas on the test file system: said so in the log.
    daemon.wait_log("is not mounted with user quotas");

    // modify of the intervals regenerates the configuration.
    slapd.set(
        &dn,
        &[
            ("sstBackupIntervalHourly", "24"),
            ("sstBackupIntervalDaily", "14"),
            ("sstBackupIntervalYearly", "2"),
            ("sstProvisioningMode", "modify"),
            ("sstProvisioningState", "0"),
        ],
    );
    let e = slapd.wait_for(&dn, "modified", is_stamp);
    assert_eq!(e["sstProvisioningReturnValue"], "0");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains("retain\thourly\t24\nretain\tdaily\t14\nretain\tweekly\t4\nretain\tmonthly\t3\nretain\tyearly\t2\n"),
        "{text}"
    );
    assert!(configtest(&conf).contains("Syntax OK"));

    // delete removes the tree and the configuration, and nothing else.
    std::fs::write(home.join("incoming/file"), "data").unwrap();
    slapd.set(
        &dn,
        &[
            ("sstProvisioningMode", "delete"),
            ("sstProvisioningState", "0"),
        ],
    );
    let e = slapd.wait_for(&dn, "deleted", is_stamp);
    assert_eq!(e["sstProvisioningReturnValue"], "0");
    assert!(!setup.account_dir(EXAMPLE_UID).exists());
    assert!(!conf.exists());
    assert!(setup.root.join("keep-me").exists());
    assert!(setup.root.is_dir());

    assert_eq!(daemon.terminate(), 0);
    let log = daemon.log_text();
    assert!(
        log.contains("Stopping Backup Rsnapshot provisioning script"),
        "{log}"
    );
    // Each step once: the echoes of our own writes were not taken for new requests.
    assert_eq!(log.matches(&format!("{dn}: adding")).count(), 1, "{log}");
    assert_eq!(log.matches(&format!("{dn}: modifying")).count(), 1, "{log}");
    assert_eq!(log.matches(&format!("{dn}: deleting")).count(), 1, "{log}");
}

#[test]
fn future_dates_and_other_states_are_left_alone_and_failures_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let tomorrow = (chrono_like_today() + 2).to_string();
    let ldif = [
        account_ldif("5000001", "add", "0", &tomorrow, [0, 7, 4, 3, 0], ""),
        account_ldif(
            "5000002",
            "add",
            "20250101T000000Z",
            "0",
            [0, 7, 4, 3, 0],
            "",
        ),
        account_ldif("5000003", "adding", "0", "0", [0, 7, 4, 3, 0], ""),
        // A past date is done (the original would wait for exactly that day forever).
        account_ldif("5000004", "add", "0", "20240101", [0, 7, 4, 3, 0], ""),
        // Its account's place is taken by a file: the add fails.
        account_ldif("5000005", "add", "0", "0", [0, 7, 4, 3, 0], ""),
    ]
    .join("\n");
    let blocked = setup.account_dir("5000005");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, "in the way").unwrap();
    slapd.add(&ldif);
    let mut daemon = setup.start(&[]);

    slapd.wait_for(&account_dn("5000004"), "added", is_stamp);
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);
    let failed = slapd.wait_for(&account_dn("5000005"), "adding", |s| s == "0");
    // The failure lands after the claim; wait for its return value.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut failed = failed;
    while !failed.contains_key("sstProvisioningReturnValue") {
        assert!(std::time::Instant::now() < deadline, "{failed:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        failed = slapd.get(&account_dn("5000005")).unwrap();
    }
    assert_eq!(failed["sstProvisioningReturnValue"], "5");
    daemon.wait_log(&format!(
        "{}: add failed (return value 5)",
        account_dn("5000005")
    ));
    assert_eq!(std::fs::read_to_string(&blocked).unwrap(), "in the way");

    // The daemon goes on: a new request after the failure is done.
    slapd.add(&account_ldif(
        "5000006",
        "add",
        "0",
        "0",
        [0, 7, 0, 0, 0],
        "",
    ));
    slapd.wait_for(&account_dn("5000006"), "added", is_stamp);

    // Left alone: future date, a state other than "0", a mode that is not a request. The
    // daemon saw them at its start, before 5000006; stopped, it finishes every entry in hand
    // before it exits, so whatever it began for them is over now.
    assert_eq!(daemon.terminate(), 0);
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "{}: add waits for its execution date",
            account_dn("5000001")
        )),
        "{log}"
    );
    for uid in ["5000001", "5000002", "5000003"] {
        assert!(
            !log.contains(&format!("{}: adding", account_dn(uid))),
            "{log}"
        );
    }
    let e = slapd.get(&account_dn("5000001")).unwrap();
    assert_eq!(
        (
            e["sstProvisioningMode"].as_str(),
            e["sstProvisioningState"].as_str()
        ),
        ("add", "0")
    );
    let e = slapd.get(&account_dn("5000002")).unwrap();
    assert_eq!(e["sstProvisioningMode"], "add");
    assert_eq!(e["sstProvisioningState"], "20250101T000000Z");
    let e = slapd.get(&account_dn("5000003")).unwrap();
    assert_eq!(e["sstProvisioningMode"], "adding");
    for uid in ["5000001", "5000002", "5000003"] {
        assert!(!setup.account_dir(uid).exists(), "{uid}");
        assert!(
            !setup.conf_dir.join(format!("{uid}.conf")).exists(),
            "{uid}"
        );
    }
}

/// Today as YYYYMMDD in local time, like the daemon, computed with `date`.
fn chrono_like_today() -> u32 {
    let out = Command::new("date").arg("+%Y%m%d").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn bad_entries_fail_with_a_message_and_the_others_go_through() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let no_backup_class = format!(
        "dn: {}\nobjectClass: account\nobjectClass: posixAccount\nobjectClass: sstProvisioning\n\
         uid: 6000001\ncn: x\nuidNumber: 6000001\ngidNumber: 6000001\nhomeDirectory: /x\n\
         sstProvisioningMode: add\nsstProvisioningState: 0\nsstProvisioningExecutionDate: 0\n",
        account_dn("6000001")
    );
    let ldif = [
        no_backup_class,
        account_ldif("a/b", "add", "0", "0", [0, 7, 4, 3, 0], "").replace("uid=a/b", "uid=a\\2Fb"),
        account_ldif("..", "add", "0", "0", [0, 7, 4, 3, 0], "").replace("uid=..,", "uid=x..,"),
        account_ldif("6000004", "add", "0", "0", [0, 100, 4, 3, 0], ""),
        account_ldif("6000005", "add", "0", "0", [0, 7, 4, 3, 0], ""),
    ]
    .join("\n");
    slapd.add(&ldif);
    let daemon = setup.start(&[]);
    slapd.wait_for(&account_dn("6000005"), "added", is_stamp);
    // The log names the DN as the server returns it ("/" unescaped).
    for (dn, logged, needle) in [
        (
            account_dn("6000001"),
            account_dn("6000001"),
            "sstBackupIntervalHourly: missing",
        ),
        (
            account_dn("a\\2Fb"),
            account_dn("a/b"),
            "uid: \"a/b\" has a character other than",
        ),
        (
            account_dn("x.."),
            account_dn("x.."),
            "uid: \"..\" starts with '.'",
        ),
        (
            account_dn("6000004"),
            account_dn("6000004"),
            "sstBackupIntervalDaily: 100 is out of range 0-99",
        ),
    ] {
        daemon.wait_log(&format!(
            "{logged}: add failed (return value 1): bad entry: {needle}"
        ));
        let e = slapd.wait_attr(&dn, "sstProvisioningReturnValue", "1");
        assert_eq!(e["sstProvisioningMode"], "adding", "{dn}");
        assert_eq!(e["sstProvisioningState"], "0", "{dn}");
        assert_eq!(e["sstProvisioningReturnValue"], "1", "{dn}");
    }
    // Nothing was made for them; only the good accounts exist.
    let mut made: Vec<String> = std::fs::read_dir(&setup.conf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, vec!["4000123.conf", "6000005.conf"]);
    assert!(!tmp.path().join("b").exists());
}

#[test]
fn restart_redoes_nothing_and_picks_up_what_changed_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let dn = account_dn(EXAMPLE_UID);
    let mut first = setup.start(&[]);
    let done = slapd.wait_for(&dn, "added", is_stamp);
    assert_eq!(first.terminate(), 0);
    assert!(std::fs::read_to_string(setup.dir.join("cookie"))
        .unwrap()
        .contains("csn="));

    // While it is down: a new account, and a modify of the first.
    slapd.add(&account_ldif(
        "7000001",
        "add",
        "0",
        "0",
        [0, 7, 4, 3, 0],
        "",
    ));
    slapd.set(
        &dn,
        &[
            ("sstBackupIntervalDaily", "3"),
            ("sstProvisioningMode", "modify"),
            ("sstProvisioningState", "0"),
        ],
    );
    let marker = setup.home(EXAMPLE_UID).join("incoming/marker");
    std::fs::write(&marker, "kept").unwrap();

    let mut second = setup.start(&[]);
    slapd.wait_for(&account_dn("7000001"), "added", is_stamp);
    slapd.wait_for(&dn, "modified", is_stamp);
    let text = std::fs::read_to_string(setup.conf_dir.join("4000123.conf")).unwrap();
    assert!(text.contains("retain\tdaily\t3\n"), "{text}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "kept");
    assert_eq!(second.terminate(), 0);
    let log = second.log_text();
    assert!(
        !log.contains(&format!("{dn}: adding")),
        "the add was redone:\n{log}"
    );
    assert_eq!(log.matches(&format!("{dn}: modifying")).count(), 1, "{log}");
    assert!(done["sstProvisioningState"] <= slapd.get(&dn).unwrap()["sstProvisioningState"]);

    // A third start with nothing to do does nothing: once it is ready (connected, with every
    // entry pending from before in hand) it is stopped, which finishes what it has in hand.
    let (path, notify) = notify_socket(tmp.path());
    let mut third = setup.start_notified(&path);
    let ready = next_notification(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert_eq!(third.terminate(), 0);
    let log = third.log_text();
    assert!(
        !log.contains(": adding") && !log.contains(": modifying"),
        "{log}"
    );
}

#[test]
fn slapd_restart_mid_run_reconnects_and_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let mut daemon = setup.start(&[]);
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);

    slapd.stop();
    daemon.wait_log("retrying in 1 s");
    // A retry while slapd is still down fails too, and the daemon goes on retrying.
    daemon.wait_log("(attempt 2 of");
    slapd.restart();
    slapd.add(&account_ldif(
        "8000001",
        "add",
        "0",
        "0",
        [0, 7, 4, 3, 0],
        "",
    ));
    slapd.wait_for(&account_dn("8000001"), "added", is_stamp);
    assert!(daemon.log_text().matches("connected to").count() >= 2);
    assert_eq!(daemon.terminate(), 0);
}

/// A datagram socket in `dir` to give prov-backup as `$NOTIFY_SOCKET`, as systemd would; reads
/// wait 30 s at most.
fn notify_socket(dir: &std::path::Path) -> (std::path::PathBuf, std::os::unix::net::UnixDatagram) {
    let path = dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    (path, notify)
}

/// The next message prov-backup sent to the notify socket (30 s at most).
fn next_notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("a systemd notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn under_systemd_it_is_ready_once_watching_and_says_when_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let (path, notify) = notify_socket(tmp.path());
    let mut daemon = setup.start_notified(&path);
    let ready = next_notification(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=watching {ACCOUNTS} on ")),
        "{ready}"
    );
    // Ready means connected, with the entries pending from before already in hand: the daemon
    // logged it before it said READY, but the thread reading its stderr may not have read the
    // line yet, so wait for the line (it fails if it never comes).
    daemon.wait_log("connected to");
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let stopping = next_notification(&notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn without_syncprov_it_polls_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), false);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let mut daemon = setup.start(&[]);
    daemon.wait_log("offers no content sync (syncprov overlay); polling every 1 s instead");
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);
    slapd.add(&account_ldif(
        "8100001",
        "add",
        "0",
        "0",
        [0, 7, 4, 3, 0],
        "",
    ));
    slapd.wait_for(&account_dn("8100001"), "added", is_stamp);
    assert_eq!(daemon.terminate(), 0);
}

/// A loopback TCP port bound by a socket that never listens: connecting to it is refused for
/// as long as the returned descriptor is open.
fn bound_unlistened_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` and `len` are
    // valid for the calls that fill them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got_len = len;
        let rc = libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut got_len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (owned, u16::from_be(addr.sin_port))
    }
}

#[test]
fn unreachable_ldap_ends_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens there, and nothing can: the port stays bound (without listen) by this
    // test, so a slapd of a test running beside it cannot take it (a dropped listener's port
    // could be, and once was).
    let (_reserved, port) = bound_unlistened_port();
    let setup = Setup::new(tmp.path(), &format!("ldap://127.0.0.1:{port}/"), "");
    // Under systemd, `systemctl status` shows why it is not ready yet while it retries.
    let (path, notify) = notify_socket(tmp.path());
    let mut daemon = setup.start_notified(&path);
    for attempt in [2, 3] {
        let status = next_notification(&notify).trim_end().to_owned();
        assert!(
            status.starts_with(&format!("STATUS=LDAP ldap://127.0.0.1:{port}/: "))
                && status.ends_with(&format!("(attempt {attempt} of 3)")),
            "{status}"
        );
        assert!(!status.contains("READY=1"), "{status}");
    }
    assert_eq!(daemon.wait_exit(), 1);
    let log = daemon.log_text();
    assert!(
        log.contains(&format!(
            "LDAP server ldap://127.0.0.1:{port}/ unreachable after 3 attempts"
        )),
        "{log}"
    );
}

#[test]
fn dry_run_whose_reader_went_away_does_not_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let mut dry = setup.start_with(&["-r"], false);
    // The report is printed within the first second; give it three.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline && !dry.log_text().contains("panicked") {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!dry.log_text().contains("panicked"), "{}", dry.log_text());
    assert_eq!(dry.terminate(), 0, "{}", dry.log_text());
    assert_eq!(std::fs::read_dir(&setup.root).unwrap().count(), 0);
}

#[test]
fn one_instance_at_a_time_and_dry_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let mut dry = setup.start(&["-r"]);
    dry.wait_log("DRY-RUN:  write");
    dry.wait_log(&format!(
        "DRY-RUN:  {}: set sstProvisioningMode added",
        account_dn(EXAMPLE_UID)
    ));
    let log = dry.log_text();
    assert!(
        log.contains(&format!(
            "DRY-RUN:  mkdir {}",
            setup.home(EXAMPLE_UID).join("incoming").display()
        )),
        "{log}"
    );
    assert!(log.contains("DRY-RUN:      retain\tdaily\t7"), "{log}");

    // A second instance is refused while the first runs.
    let mut second = setup.start(&[]);
    assert_eq!(second.wait_exit(), 1);
    assert!(
        second.log_text().contains("another prov-backup is running"),
        "{}",
        second.log_text()
    );

    assert_eq!(dry.terminate(), 0);
    let e = slapd.get(&account_dn(EXAMPLE_UID)).unwrap();
    assert_eq!(
        (
            e["sstProvisioningMode"].as_str(),
            e["sstProvisioningState"].as_str()
        ),
        ("add", "0")
    );
    assert!(!e.contains_key("sstProvisioningReturnValue"));
    assert_eq!(std::fs::read_dir(&setup.root).unwrap().count(), 0);
    assert!(!setup.conf_dir.exists());
    assert!(!setup.dir.join("cookie").exists());
}

#[test]
fn delete_never_follows_a_symlink_out_of_the_backup_root() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    let mut daemon = setup.start(&[]);
    let dn = account_dn(EXAMPLE_UID);
    slapd.wait_for(&dn, "added", is_stamp);
    assert_eq!(daemon.terminate(), 0);

    // The account directory is swapped for a symlink to precious data elsewhere.
    let precious = tmp.path().join("precious");
    std::fs::create_dir_all(precious.join("chroot")).unwrap();
    std::fs::write(precious.join("chroot/data"), "do not delete").unwrap();
    let account = setup.account_dir(EXAMPLE_UID);
    std::fs::rename(&account, tmp.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&precious, &account).unwrap();

    let daemon = setup.start(&[]);
    slapd.set(
        &dn,
        &[
            ("sstProvisioningMode", "delete"),
            ("sstProvisioningState", "0"),
        ],
    );
    daemon.wait_log(&format!("{dn}: delete failed (return value 5)"));
    assert_eq!(
        std::fs::read_to_string(precious.join("chroot/data")).unwrap(),
        "do not delete"
    );
    let e = slapd.wait_attr(&dn, "sstProvisioningReturnValue", "5");
    assert_eq!(e["sstProvisioningMode"], "deleting");
    assert_eq!(e["sstProvisioningReturnValue"], "5");
}

#[test]
fn quota_is_set_in_kib_blocks_on_the_backup_root_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    // QUOTA = always with a stand-in for setquota that records its arguments (the test file
    // system has no quotas to set).
    let record = tmp.path().join("setquota.args");
    let script = tmp.path().join("setquota");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let setup = Setup::new(
        &tmp.path().join("prov"),
        &slapd.url(),
        &format!("QUOTA = always\nQUOTA_COMMAND = {}\n", script.display()),
    );
    let _daemon = setup.start(&[]);
    let dn = account_dn(EXAMPLE_UID);
    slapd.wait_for(&dn, "added", is_stamp);
    let mount = String::from_utf8(
        Command::new("findmnt")
            .args(["-n", "-o", "TARGET", "--target"])
            .arg(&setup.root)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // One line per setquota call; `call(n)` waits for none and reads the n-th.
    let call = |n: usize| {
        std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .nth(n)
            .unwrap_or_default()
            .to_owned()
    };
    // 1073741824 bytes = 1048576 KiB.
    assert_eq!(
        call(0),
        format!("-u 4000123 1048576 1048576 0 0 {}", mount.trim())
    );
    for (n, quota, mode, done, limit) in [
        // 1500 bytes round up to 2 KiB.
        (1, Some("1500"), "modify", "modified", "2"),
        // delete lifts the limit.
        (2, None, "delete", "deleted", "0"),
    ] {
        let mut pairs = vec![("sstProvisioningMode", mode), ("sstProvisioningState", "0")];
        if let Some(q) = quota {
            pairs.push(("sstQuota", q));
        }
        slapd.set(&dn, &pairs);
        slapd.wait_for(&dn, done, is_stamp);
        assert_eq!(
            call(n),
            format!("-u 4000123 {limit} {limit} 0 0 {}", mount.trim())
        );
    }
}

/// Clears the immutable flag again so the temp dir can be removed.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Immutable {
        let out = Command::new("chattr").arg("+i").arg(path).output().unwrap();
        assert!(
            out.status.success(),
            "chattr +i {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[test]
fn an_unwritable_backup_root_fails_the_add_and_the_daemon_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    // Not writable even for root: the immutable flag.
    let guard = Immutable::set(&setup.root);
    let daemon = setup.start(&[]);
    let dn = account_dn(EXAMPLE_UID);
    daemon.wait_log(&format!("{dn}: add failed (return value 2): mkdir "));
    let e = slapd.wait_attr(&dn, "sstProvisioningReturnValue", "2");
    assert_eq!(e["sstProvisioningMode"], "adding");
    assert_eq!(e["sstProvisioningState"], "0");
    assert_eq!(e["sstProvisioningReturnValue"], "2");
    drop(guard);

    // Once the root is writable, a reset request goes through with the same daemon.
    slapd.set(
        &dn,
        &[
            ("sstProvisioningMode", "add"),
            ("sstProvisioningState", "0"),
        ],
    );
    let e = slapd.wait_for(&dn, "added", is_stamp);
    assert_eq!(e["sstProvisioningReturnValue"], "0");
    assert!(setup.home(EXAMPLE_UID).join("incoming").is_dir());
}

#[test]
fn sigterm_finishes_the_entry_in_hand_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    // A jail command that waits for the test's word keeps the add busy until the daemon has
    // been told to stop in the middle of it.
    let go = tmp.path().join("go");
    let slow = tmp.path().join("slow-jail-init");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\ntouch \"$1/initialised\"\n",
            go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let setup = Setup::new(
        &tmp.path().join("prov"),
        &slapd.url(),
        &format!("JAIL_INIT = {}\n", slow.display()),
    );
    let mut daemon = setup.start(&[]);
    let dn = account_dn(EXAMPLE_UID);
    daemon.wait_log(&format!("{dn}: adding"));
    daemon.send_sigterm();
    daemon.wait_log("stop requested");
    std::fs::write(&go, "").unwrap();
    assert_eq!(daemon.wait_exit(), 0);
    let e = slapd.get(&dn).unwrap();
    assert_eq!(
        e["sstProvisioningMode"],
        "added",
        "{e:?}\n{}",
        daemon.log_text()
    );
    assert!(is_stamp(&e["sstProvisioningState"]));
    assert!(setup
        .account_dir(EXAMPLE_UID)
        .join("chroot/initialised")
        .exists());
    let log = daemon.log_text();
    let stop = log.find("stop requested").unwrap();
    let added = log.find(&format!("{dn}: added at")).unwrap();
    assert!(stop < added, "{log}");
}

#[test]
fn two_daemons_on_one_directory_never_do_an_entry_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    // Two daemons by mistake (own lock files and cookies) watching the same accounts: the claim
    // is written under an assertion, so only one of them may take each request.
    let a = Setup::new(&tmp.path().join("a"), &slapd.url(), "");
    let b = Setup::new(&tmp.path().join("b"), &slapd.url(), "");
    let uids: Vec<String> = (0..40).map(|i| format!("{}", 9_100_000 + i)).collect();
    let ldif: Vec<String> = uids
        .iter()
        .map(|u| account_ldif(u, "add", "0", "0", [0, 7, 4, 3, 0], ""))
        .collect();
    let first = a.start(&[]);
    let second = b.start(&[]);
    first.wait_log("connected to");
    second.wait_log("connected to");
    slapd.add(&ldif.join("\n"));
    for u in &uids {
        slapd.wait_for(&account_dn(u), "added", is_stamp);
    }
    slapd.wait_for(&account_dn(EXAMPLE_UID), "added", is_stamp);
    let logs = format!("{}\n{}", first.log_text(), second.log_text());
    for u in uids.iter().map(String::as_str).chain([EXAMPLE_UID]) {
        let dn = account_dn(u);
        assert_eq!(
            logs.matches(&format!("{dn}: adding")).count(),
            1,
            "{u}:\n{logs}"
        );
        assert_eq!(
            logs.matches(&format!("{dn}: added at")).count(),
            1,
            "{u}:\n{logs}"
        );
    }
}
