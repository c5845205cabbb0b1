//! The admin page: one HTML file with its CSS and script inline (no external assets: it works
//! offline and loads nothing from elsewhere), and a content security policy that lets it talk
//! to this server only.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header;
use hyper::Response;

const PAGE: &str = include_str!("page.html");

/// Inline style and script only; fetches to this origin only; no frames, forms elsewhere or
/// plugins.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

pub fn answer() -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, POLICY)
        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
        .expect("a valid response")
}
