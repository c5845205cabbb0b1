//! Who may do what on the HTTP side: the admin token (compared in constant time, as the TCP
//! handshake's secret), where it may come from (the `Authorization` header only, never a
//! URL), and the `Host`/`Origin` sanity checks that keep other web sites (a DNS-rebinding
//! page, a cross-site form) away from the API.

use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, AUTHORIZATION, HOST, ORIGIN};
use sha2::Sha256;

/// Who must show the token (`http_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Reading is open to whoever reaches the port; actions and jobs need the token.
    #[default]
    Actions,
    /// Everything but the page's static HTML needs the token.
    All,
}

/// The admin token, kept as a keyed digest so a comparison takes the same time whatever the
/// guess (the digest of the guess is checked with `verify_slice`, constant-time).
/// The secret itself is kept too, to find it inside a URL ([`token_in_query`]).
#[derive(Clone)]
pub struct Token {
    digest: Vec<u8>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

fn mac_of(secret: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"deskd-http-admin");
    mac
}

impl Token {
    /// The token of a token file's bytes.
    pub fn new(secret: &[u8]) -> Token {
        Token {
            digest: mac_of(secret).finalize().into_bytes().to_vec(),
            secret: secret.to_vec(),
        }
    }

    /// Whether `text` contains the token anywhere. Each window is compared without an early
    /// exit, so the time taken says nothing about how much of the token a guess got right.
    fn found_in(&self, text: &[u8]) -> bool {
        let n = self.secret.len();
        n > 0
            && text.len() >= n
            && text.windows(n).fold(false, |found, window| {
                let differs = window
                    .iter()
                    .zip(&self.secret)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                found | (differs == 0)
            })
    }

    /// Whether `guess` is the token (constant time in the guess's content).
    pub fn matches(&self, guess: &[u8]) -> bool {
        mac_of(guess).verify_slice(&self.digest).is_ok()
    }
}

/// What a request proved about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header.
    Missing,
    /// A header with another token (or not `Bearer`).
    Wrong,
    /// The admin token.
    Admin,
}

/// The credential the request's `Authorization: Bearer …` header shows.
pub fn credential(headers: &HeaderMap, token: &Token) -> Credential {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credential::Missing;
    };
    let bytes = value.as_bytes();
    let given = bytes
        .strip_prefix(b"Bearer ")
        .or_else(|| bytes.strip_prefix(b"bearer "));
    match given {
        Some(given) if token.matches(given.trim_ascii()) => Credential::Admin,
        _ => Credential::Wrong,
    }
}

/// Whether the query string carries the token (anywhere, under any name, percent-encoded or
/// not) or a parameter whose name looks like one (`token=`, `access_token=`, `auth=`…):
/// refused outright, so nobody gets used to putting it in a URL (URLs end up in logs, history
/// and `Referer` headers).
pub fn token_in_query(query: Option<&str>, token: &Token) -> bool {
    query.is_some_and(|q| {
        let named = q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
            key.contains("token") || key.contains("auth") || key == "bearer"
        });
        named || token.found_in(q.as_bytes()) || token.found_in(&percent_decoded(q))
    })
}

/// A query string with `%XX` and `+` decoded (a malformed `%` is kept as it is).
fn percent_decoded(query: &str) -> Vec<u8> {
    let bytes = query.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let decoded = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match (bytes[i], decoded) {
            (b'%', Some((high, low))) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Why a request's `Host` or `Origin` is refused, if it is.
pub fn origin_problem(headers: &HeaderMap, hosts: &[String]) -> Option<&'static str> {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return Some("no Host header");
    };
    if !host_allowed(host, hosts) {
        return Some("this Host is not one deskd answers to (http_hosts)");
    }
    match headers.get(ORIGIN).map(|o| o.to_str()) {
        None => None,
        Some(Ok(origin)) if same_origin(origin, host) => None,
        Some(_) => Some("cross-site request (Origin is not this server)"),
    }
}

/// `Host` is an IP address, `localhost`, or one of `hosts` (each with any port). A name
/// outside these could be a DNS-rebinding page reaching 127.0.0.1 under its own name.
fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The name part of a `Host` value: `[::1]:8470` → `::1`, `a.example:80` → `a.example`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `Origin` is `http://<Host>` (the page calling its own server).
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_token_in_the_header_counts() {
        let token = Token::new(b"0123456789abcdef");
        let check = |pairs: &[(&'static str, &str)]| credential(&headers(pairs), &token);
        assert_eq!(check(&[]), Credential::Missing);
        assert_eq!(
            check(&[("authorization", "Bearer 0123456789abcdef")]),
            Credential::Admin
        );
        assert_eq!(
            check(&[("authorization", "Bearer 0123456789abcdeX")]),
            Credential::Wrong
        );
        assert_eq!(
            check(&[("authorization", "Basic 0123456789abcdef")]),
            Credential::Wrong
        );
        assert_eq!(
            check(&[("authorization", "Bearer 0123456789abcdef0")]),
            Credential::Wrong
        );
        assert!(token_in_query(Some("a=1&token=x"), &token));
        assert!(token_in_query(Some("access_token=x"), &token));
        assert!(!token_in_query(Some("seconds=30&from=2"), &token));
        assert!(!token_in_query(None, &token));
    }

    #[test]
    fn the_token_is_refused_in_a_url_under_any_name() {
        let token = Token::new(b"0123456789abcdef");
        let found = |q: &str| token_in_query(Some(q), &token);
        for key in [
            "api_key", "apikey", "key", "secret", "password", "session", "sig", "jwt",
        ] {
            assert!(found(&format!("{key}=0123456789abcdef")), "{key}");
        }
        assert!(found("0123456789abcdef"));
        assert!(found("x=prefix-0123456789abcdef-suffix"));
        assert!(found("x=%30%31%32%33456789abcdef"));
        assert!(!found("x=0123456789abcdeX"));
        assert!(!found("seconds=30"));
        assert!(!found("x=%"));
    }

    #[test]
    fn hosts_and_origins() {
        let hosts = vec!["files.example".to_string()];
        let problem = |pairs: &[(&'static str, &str)]| origin_problem(&headers(pairs), &hosts);
        assert_eq!(problem(&[("host", "127.0.0.1:8470")]), None);
        assert_eq!(problem(&[("host", "[::1]:8470")]), None);
        assert_eq!(problem(&[("host", "localhost:8470")]), None);
        assert_eq!(problem(&[("host", "FILES.example:8470")]), None);
        assert!(problem(&[("host", "evil.example:8470")]).is_some());
        assert!(problem(&[]).is_some());
        assert_eq!(
            problem(&[
                ("host", "127.0.0.1:8470"),
                ("origin", "http://127.0.0.1:8470")
            ]),
            None
        );
        assert!(problem(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "http://evil.example")
        ])
        .is_some());
        assert!(problem(&[("host", "127.0.0.1:8470"), ("origin", "null")]).is_some());
    }
}
