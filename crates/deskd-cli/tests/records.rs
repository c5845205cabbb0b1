//! APPL, icon and comment records and Finder info through the server.

mod common;
use common::*;
use deskd_client::{ErrorCode, Request, Response};

#[test]
fn appl_icon_comment_and_set_info() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/SimpleText", b"vol/doc"]);
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let app = env.id_of(&env.path("vol/SimpleText"));
    let doc = env.id_of(&env.path("vol/doc"));

    // Setting the type to APPL registers the application for its creator.
    let o = c
        .object(Request::SetInfo {
            vol,
            id: app,
            type_code: Some(*b"APPL"),
            creator: Some(*b"ttxt"),
            flags: Some(0x100),
        })
        .unwrap();
    assert_eq!(
        (&o.type_code, &o.creator, o.flags),
        (b"APPL", b"ttxt", 0x100)
    );
    assert_eq!(
        c.call(Request::ApplGet {
            vol,
            creator: *b"ttxt"
        })
        .unwrap(),
        Response::Appl(vec![(app, 0)])
    );
    let db = env.path("vol/.Desktop");
    assert_eq!(
        sqlite3(
            &db,
            "SELECT app_id FROM appl WHERE creator = CAST('ttxt' AS BLOB)"
        ),
        app.to_string()
    );
    // An explicit APPL record, and its removal.
    c.call(Request::ApplAdd {
        vol,
        creator: *b"8BIM",
        app_id: app,
        tag: 5,
    })
    .unwrap();
    assert_eq!(
        c.call(Request::ApplGet {
            vol,
            creator: *b"8BIM"
        })
        .unwrap(),
        Response::Appl(vec![(app, 5)])
    );
    c.call(Request::ApplRemove {
        vol,
        creator: *b"8BIM",
        app_id: app,
    })
    .unwrap();
    let err = c
        .call(Request::ApplRemove {
            vol,
            creator: *b"8BIM",
            app_id: app,
        })
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    // Icons by creator, type and kind.
    c.call(Request::IconAdd {
        vol,
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 9,
        bitmap: vec![0xAA; 128],
    })
    .unwrap();
    assert_eq!(
        text_icon(&mut c, vol),
        Response::Icon(Some((9, vec![0xAA; 128])))
    );
    assert_eq!(
        c.call(Request::IconList {
            vol,
            creator: *b"ttxt"
        })
        .unwrap(),
        Response::Icons(vec![(*b"TEXT", 1, 9)])
    );

    // Comments: add replaces, remove removes.
    c.call(Request::CommentSet {
        vol,
        id: doc,
        text: b"first".to_vec(),
    })
    .unwrap();
    c.call(Request::CommentSet {
        vol,
        id: doc,
        text: b"second".to_vec(),
    })
    .unwrap();
    assert_eq!(
        c.call(Request::CommentGet { vol, id: doc }).unwrap(),
        Response::Comment(Some(b"second".to_vec()))
    );
    c.call(Request::CommentRemove { vol, id: doc }).unwrap();
    assert_eq!(
        c.call(Request::CommentGet { vol, id: doc }).unwrap(),
        Response::Comment(None)
    );

    // Removing the application with dt unregisters it.
    env.dt_ok(&[b"rm", b"vol/SimpleText"]);
    assert_eq!(
        c.call(Request::ApplGet {
            vol,
            creator: *b"ttxt"
        })
        .unwrap(),
        Response::Appl(vec![])
    );
    // The type and creator show in dt ls -l and dt info.
    c.call(Request::SetInfo {
        vol,
        id: doc,
        type_code: Some(*b"TEXT"),
        creator: Some(*b"ttxt"),
        flags: None,
    })
    .unwrap();
    assert!(env.dt_ok(&[b"ls", b"-l", b"vol"]).contains("TEXT ttxt"));
}

/// What one request may store is bounded for every peer (docs/security.md, "Resource limits"):
/// the desktop is deskd's file, which no user's quota limits.
#[test]
fn a_comment_or_icon_larger_than_its_bound_is_refused_before_it_is_stored() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/doc"]);
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let doc = env.id_of(&env.path("vol/doc"));
    let icon = |len: usize| Request::IconAdd {
        vol,
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 1,
        bitmap: vec![0x55; len],
    };
    let comment = |len: usize| Request::CommentSet {
        vol,
        id: doc,
        text: vec![b'c'; len],
    };
    // The bounds themselves are stored (a comment longer than AFP's 199 bytes stays whole).
    c.call(icon(deskd_proto::MAX_ICON_BITMAP)).unwrap();
    c.call(comment(deskd_proto::MAX_COMMENT)).unwrap();
    assert_eq!(
        c.call(Request::CommentGet { vol, id: doc }).unwrap(),
        Response::Comment(Some(vec![b'c'; deskd_proto::MAX_COMMENT]))
    );
    // One byte more, or a megabyte, is refused saying why, and nothing changes.
    for len in [deskd_proto::MAX_ICON_BITMAP + 1, 1_000_000] {
        let err = c.call(icon(len)).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        assert!(
            err.to_string().contains("larger than the 65535 bytes"),
            "{err}"
        );
    }
    for len in [deskd_proto::MAX_COMMENT + 1, 1_000_000] {
        let err = c.call(comment(len)).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        assert!(
            err.to_string().contains("longer than the 1024 bytes"),
            "{err}"
        );
    }
    assert_eq!(
        text_icon(&mut c, vol),
        Response::Icon(Some((1, vec![0x55; deskd_proto::MAX_ICON_BITMAP])))
    );
    assert_eq!(
        c.call(Request::CommentGet { vol, id: doc }).unwrap(),
        Response::Comment(Some(vec![b'c'; deskd_proto::MAX_COMMENT]))
    );
    // dt set says so too.
    let long = "x".repeat(deskd_proto::MAX_COMMENT + 1);
    let out = env.dt(&[b"set", b"--comment", long.as_bytes(), b"vol/doc"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("longer than the 1024 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
