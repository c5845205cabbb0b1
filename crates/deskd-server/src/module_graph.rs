//! A check that the server's modules depend on each other one way only: no module reaches,
//! through the modules it uses, back to itself. A circle (the writer holding a connection's
//! reply type while the connection holds the writer's jobs) means neither can be understood,
//! tested or changed alone; this test names the circle when one comes back.
//!
//! It reads the sources (without their `#[cfg(test)] mod` blocks and comments) and follows
//! every path that names a module of this crate: `crate::…`, `super::…`, `self::…` and a
//! child module by its name. A module and its own submodules are one unit (children use what
//! their parent shares, the parent dispatches to them), so edges between them do not count;
//! edges to and from the crate root do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path → production source, for every `.rs` file under `src` (`""` is the crate root).
fn read_modules(src: &Path) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    let mut dirs = vec![(src.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut inner = prefix.clone();
                inner.push(name);
                dirs.push((path, inner));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let mut module = prefix.clone();
            if !(prefix.is_empty() && (name == "lib" || name == "main")) && name != "mod" {
                module.push(name);
            }
            let text = std::fs::read_to_string(&path).unwrap();
            modules.insert(module.join("::"), production(&text));
        }
    }
    modules
}

/// `source` without comments and without the `#[cfg(test)]` modules (tests may use anything).
fn production(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            let indent = line.len() - trimmed.len();
            let declaration = lines.next().unwrap_or_default();
            if !declaration.trim_end().ends_with(';') {
                // Skip to the module's closing brace at the same indentation.
                let end = format!("{}}}", " ".repeat(indent));
                for inner in lines.by_ref() {
                    if inner.trim_end() == end {
                        break;
                    }
                }
            }
            continue;
        }
        let code = match line.find("//") {
            // Not `https://`, in a string.
            Some(at) if !line[..at].ends_with(':') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The paths written in `code`: `a::b::c` sequences, and every leaf of a `use a::{b, c::d}`
/// tree spelled out in full.
fn paths(code: &str) -> Vec<Vec<String>> {
    #[derive(Debug, PartialEq)]
    enum Token {
        Ident(String),
        Sep,
        Open,
        Close,
        Comma,
        Other,
    }
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_alphanumeric() || c == '_' => {
                let mut ident = c.to_string();
                while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                    ident.push(n);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                tokens.push(Token::Sep);
            }
            // A string's words are not paths (its braces are not groups either).
            '"' => {
                let mut escaped = false;
                for n in chars.by_ref() {
                    match n {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                tokens.push(Token::Other);
            }
            // A char literal (`'"'`, `'\''`); a lifetime is left as it is.
            '\'' => {
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for n in chars.by_ref() {
                            if n == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => {}
                }
                tokens.push(Token::Other);
            }
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            ',' => tokens.push(Token::Comma),
            c if c.is_whitespace() => {}
            _ => tokens.push(Token::Other),
        }
    }
    let mut out = Vec::new();
    // Each open brace that follows `path::` starts a group whose leaves extend that path.
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(name) => {
                if current.is_empty() {
                    current = groups.last().cloned().unwrap_or_default();
                }
                current.push(name.clone());
                if tokens.get(i + 1) != Some(&Token::Sep) {
                    out.push(std::mem::take(&mut current));
                }
            }
            Token::Sep => {}
            Token::Open if tokens.get(i.wrapping_sub(1)) == Some(&Token::Sep) => {
                groups.push(std::mem::take(&mut current));
            }
            Token::Close if !groups.is_empty() && current.is_empty() => {
                // A brace that closes a use group (other braces were never opened as one).
                groups.pop();
            }
            _ => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                if matches!(tokens[i], Token::Other) && !groups.is_empty() {
                    // A `;` or other punctuation: a use group never spans it.
                    groups.clear();
                }
            }
        }
        i += 1;
    }
    out
}

/// The modules of this crate that module `from` depends on.
fn dependencies(from: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let own: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut found = BTreeSet::new();
    // A lone name is a local binding as often as a module: only paths count.
    for path in paths(code).into_iter().filter(|p| p.len() > 1) {
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let absolute: Vec<&str> = match segments.first() {
            Some(&"crate") => segments[1..].to_vec(),
            Some(&"super") => [&own[..own.len().saturating_sub(1)], &segments[1..]].concat(),
            Some(&"self") => [&own[..], &segments[1..]].concat(),
            Some(first) if modules.contains(&[&own[..], &[*first]].concat().join("::")) => {
                [&own[..], &segments[..]].concat()
            }
            _ => continue,
        };
        // The longest prefix that is a module; an item of the crate root otherwise.
        let target = (0..=absolute.len())
            .rev()
            .map(|n| absolute[..n].join("::"))
            .find(|m| modules.contains(m))
            .unwrap_or_default();
        let related = |a: &str, b: &str| {
            !a.is_empty() && !b.is_empty() && (a == b || b.starts_with(&format!("{a}::")))
        };
        if target != from && !related(&target, from) && !related(from, &target) {
            found.insert(target);
        }
    }
    found
}

/// A circle of modules, if there is one (each depends on the next, the last on the first).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, done, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn graph_of(sources: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(m, code)| (m.clone(), dependencies(m, code, &modules)))
        .collect()
}

fn show(m: &str) -> &str {
    if m.is_empty() {
        "lib.rs"
    } else {
        m
    }
}

#[test]
fn the_server_modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&read_modules(&src));
    // The ones the issue named, so that a checker that found nothing cannot pass.
    assert!(graph["conn"].contains("writer"), "{:?}", graph["conn"]);
    assert!(
        graph["rebuild"].contains("volume"),
        "{:?}",
        graph["rebuild"]
    );
    if let Some(circle) = find_circle(&graph) {
        let names: Vec<&str> = circle.iter().map(|m| show(m)).collect();
        panic!(
            "the server's modules depend on each other in a circle: {} -> {}",
            names.join(" -> "),
            names[0]
        );
    }
}

#[test]
fn a_circle_is_found_and_a_parent_with_its_children_is_not_one() {
    let sources = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(m, code)| (m.to_string(), production(code)))
            .collect()
    };
    let circle = sources(&[
        ("", "mod a; mod b; mod c;"),
        ("a", "use crate::b::Thing; // crate::c in a comment"),
        (
            "d",
            "fn f() { let _ = (\"crate::a::x\", '\"', '\\'', crate::c::y); }",
        ),
        ("b", "use crate::{c::{self, More}, x};"),
        ("c", "fn f() { super::a::g() }"),
    ]);
    let found = find_circle(&graph_of(&circle)).expect("a -> b -> c -> a");
    assert_eq!(found.len(), 3, "{found:?}");
    let graph = graph_of(&circle);
    assert_eq!(
        graph["d"].iter().collect::<Vec<_>>(),
        ["c"],
        "strings and char literals hold no paths"
    );
    let family = sources(&[
        ("", "mod a; mod b;"),
        ("a", "pub use one::f; fn g() { one::h() }"),
        ("a::one", "use super::Shared; use crate::b::x;"),
        (
            "b",
            "#[cfg(test)]\nmod tests {\n    use crate::a::one;\n}\n",
        ),
    ]);
    let graph = graph_of(&family);
    assert_eq!(find_circle(&graph), None, "{graph:?}");
    assert!(graph["a::one"].contains("b"), "{graph:?}");
    assert!(graph["b"].is_empty(), "test code does not count: {graph:?}");
}
