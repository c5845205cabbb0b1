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
        c.call(Request::IconGet {
            vol,
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype: 1
        })
        .unwrap(),
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
