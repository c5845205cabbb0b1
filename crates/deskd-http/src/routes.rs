//! The routes: who may call each (see [`crate::auth`]), what it does, and its answer. Blocking
//! work (the metrics text, a request to the server's socket) runs on the blocking pool, never
//! on the runtime's one thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::api::StatusView;
use crate::auth::{self, AuthMode, Credential, Token};
use crate::control::{find_volume, Control, SimpleAction};
use crate::jobs::{JobKind, Jobs, StartError, MAX_RUNNING};
use crate::page;
use crate::MetricsFn;

/// Most bytes of a request body (the actions take a few parameters at most).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// A body must arrive whole within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest freeze the page may ask for; the server clamps to `freeze_max` anyway.
const MAX_FREEZE_SECONDS: u32 = 24 * 3600;
/// A wrong token (or the token in a URL) is answered after this, like a wrong TCP handshake,
/// to slow guessing. Only the refused request waits: the runtime goes on serving others.
pub const WRONG_TOKEN_DELAY: Duration = Duration::from_secs(1);

/// Marks an answer that must wait [`WRONG_TOKEN_DELAY`] before it goes out.
#[derive(Clone, Copy)]
struct WrongTokenDelay;

/// What every request handler shares.
pub struct State {
    /// Read again on SIGHUP ([`crate::HttpServer::reload_token`]).
    pub token: std::sync::RwLock<Token>,
    pub token_file: std::path::PathBuf,
    pub auth: AuthMode,
    pub hosts: Vec<String>,
    pub control: Control,
    pub jobs: Jobs,
    pub metrics: MetricsFn,
    /// When a refused token was last logged (at most one line every 10 s).
    pub last_refusal_log: Mutex<Option<Instant>>,
    /// Refusals since the last logged one (said in the next line).
    pub refusals_unlogged: std::sync::atomic::AtomicU64,
}

type Answer = Response<Full<Bytes>>;

/// Answer one request.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let mut answer = route(&state, peer, request).await;
    if answer
        .extensions_mut()
        .remove::<WrongTokenDelay>()
        .is_some()
    {
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
    }
    let headers = answer.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Ok(answer)
}

async fn route(state: &Arc<State>, peer: SocketAddr, request: Request<Incoming>) -> Answer {
    if let Some(why) = auth::origin_problem(request.headers(), &state.hosts) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if auth::token_in_query(request.uri().query(), &state.token.read().unwrap()) {
        state.log_refusal(peer, "a token in the URL");
        let mut answer = error(
            StatusCode::UNAUTHORIZED,
            "the token goes in the Authorization header (Bearer), never in a URL",
        );
        answer.extensions_mut().insert(WrongTokenDelay);
        return answer;
    }
    let credential = auth::credential(request.headers(), &state.token.read().unwrap());
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    // HEAD is answered as GET; hyper leaves the body out.
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (segments.as_slice(), &method) {
        ([""], &Method::GET) => page::answer(),
        (["metrics"], &Method::GET) => {
            if let Some(refused) = state.require(credential, state.auth == AuthMode::All, peer) {
                return refused;
            }
            if credential == Credential::Wrong {
                return state.refuse(credential, peer);
            }
            let admin = credential == Credential::Admin;
            let metrics = state.metrics.clone();
            match tokio::task::spawn_blocking(move || metrics(admin)).await {
                Ok(text) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(text)))
                    .expect("a valid response"),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed"),
            }
        }
        (["api", "status"], &Method::GET) => {
            if let Some(refused) = state.require(credential, state.auth == AuthMode::All, peer) {
                return refused;
            }
            if credential == Credential::Wrong {
                return state.refuse(credential, peer);
            }
            let admin = credential == Credential::Admin;
            let state = state.clone();
            let work = move || {
                let volumes = state.control.status();
                let not_served = state.control.not_served();
                volumes.map(|v| {
                    StatusView::new(v, not_served, admin, admin.then(|| state.jobs.list()))
                })
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok(view)) => json(StatusCode::OK, &view),
                Ok(Err(why)) => {
                    tracing::warn!("http: status: {why}");
                    error(
                        StatusCode::BAD_GATEWAY,
                        "deskd does not answer on its socket",
                    )
                }
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "status failed"),
            }
        }
        (["api", "jobs"], &Method::GET) => {
            if let Some(refused) = state.require(credential, true, peer) {
                return refused;
            }
            json(StatusCode::OK, &state.jobs.list())
        }
        (["api", "jobs", id], &Method::GET) => {
            if let Some(refused) = state.require(credential, true, peer) {
                return refused;
            }
            let from = match param(&query, "from").map(str::parse) {
                None => 0,
                Some(Ok(from)) => from,
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "from must be a whole number (the first line to send)",
                    )
                }
            };
            match id.parse().ok().and_then(|id| state.jobs.get(id, from)) {
                Some(job) => json(StatusCode::OK, &job),
                None => error(StatusCode::NOT_FOUND, "no such job"),
            }
        }
        (["api", "volumes", name, action], &Method::POST) => {
            if let Some(refused) = state.require(credential, true, peer) {
                return refused;
            }
            let (name, action) = (name.to_string(), action.to_string());
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            act(state, peer, &name, &action, &query, &body).await
        }
        ([""] | ["metrics"] | ["api", "status"] | ["api", "jobs"] | ["api", "jobs", _], _) => {
            let mut answer = error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            answer
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            answer
        }
        (["api", "volumes", _, _], _) => {
            let mut answer = error(StatusCode::METHOD_NOT_ALLOWED, "actions take POST");
            answer
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            answer
        }
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    }
}

impl State {
    /// The refusal when `needed` and the request did not show the token; `None`: go on.
    fn require(&self, credential: Credential, needed: bool, peer: SocketAddr) -> Option<Answer> {
        (needed && credential != Credential::Admin).then(|| self.refuse(credential, peer))
    }

    /// 401 without a token (asking for one), 403 with a wrong one.
    fn refuse(&self, credential: Credential, peer: SocketAddr) -> Answer {
        match credential {
            Credential::Wrong => {
                self.log_refusal(peer, "a wrong token");
                let mut answer = error(StatusCode::FORBIDDEN, "wrong token");
                answer.extensions_mut().insert(WrongTokenDelay);
                answer
            }
            _ => {
                let mut answer = error(
                    StatusCode::UNAUTHORIZED,
                    "this needs the admin token (Authorization: Bearer …)",
                );
                answer.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"deskd\""),
                );
                answer
            }
        }
    }

    fn log_refusal(&self, peer: SocketAddr, what: &str) {
        use std::sync::atomic::Ordering;
        let mut last = self.last_refusal_log.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            let before = self.refusals_unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                "http: {peer}: refused: {what} (said at most every 10 s; {before} more \
                 refusals since the last line)"
            );
            *last = Some(Instant::now());
        } else {
            self.refusals_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The body, read under the size and time caps (413, 408).
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Answer> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, "the request body broke off")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// `POST /api/volumes/<name>/<action>`.
async fn act(
    state: &Arc<State>,
    peer: SocketAddr,
    name: &str,
    action: &str,
    query: &str,
    body: &[u8],
) -> Answer {
    enum Wanted {
        Simple(SimpleAction),
        Job(JobKind),
    }
    let wanted = match action {
        "flush" => Wanted::Simple(SimpleAction::Flush),
        "thaw" => Wanted::Simple(SimpleAction::Thaw),
        "freeze" => match freeze_seconds(query, body) {
            Ok(seconds) => Wanted::Simple(SimpleAction::Freeze(seconds)),
            Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        },
        "rebuild-check" => Wanted::Job(JobKind::RebuildCheck),
        "rebuild-repair" => Wanted::Job(JobKind::RebuildRepair),
        "backup" => Wanted::Job(JobKind::Backup),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "no such action (flush, freeze, thaw, rebuild-check, rebuild-repair, backup)",
            )
        }
    };
    let (state, name, action) = (state.clone(), name.to_string(), action.to_string());
    let work = move || -> Answer {
        let volumes = match state.control.status() {
            Ok(v) => v,
            Err(why) => return error(StatusCode::BAD_GATEWAY, &why),
        };
        let Some(volume) = find_volume(&volumes, &name) else {
            return error(StatusCode::NOT_FOUND, "no served volume has this name");
        };
        let shown = crate::control::volume_name(&volume.root);
        let root = String::from_utf8_lossy(&volume.root).into_owned();
        let vol = volume.vol;
        // The audit line: who (the HTTP peer; the server's own audit log sees deskd's uid),
        // what, on which volume (handle and root: two roots may end alike), and how it ended.
        let audit = |outcome: &str| {
            tracing::info!("http: {peer}: {action} on volume {vol} ({root}): {outcome}");
        };
        let is_job = matches!(wanted, Wanted::Job(_));
        let answer = match wanted {
            Wanted::Simple(simple) => match state.control.simple(vol, simple) {
                Ok((outcome, frozen_until)) => {
                    audit(&outcome);
                    let mut body = serde_json::json!({
                        "ok": true, "volume": shown, "handle": vol, "root": root,
                        "action": action, "outcome": outcome,
                    });
                    if let Some(until) = frozen_until {
                        body["frozen_until"] = until.into();
                    }
                    json(StatusCode::OK, &body)
                }
                Err(why) => {
                    audit(&format!("refused: {why}"));
                    error(StatusCode::CONFLICT, &why)
                }
            },
            Wanted::Job(kind) => match state.jobs.start(kind, vol, &shown, &volume.root) {
                Ok(job) => {
                    audit(&format!("started as http job {job}"));
                    json(
                        StatusCode::ACCEPTED,
                        &serde_json::json!({
                            "ok": true, "volume": shown, "handle": vol, "root": root,
                            "action": action, "job": job,
                        }),
                    )
                }
                Err(StartError::Busy) => error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("{MAX_RUNNING} jobs are running; wait for one to end"),
                ),
                Err(StartError::NoBackupDir) => error(
                    StatusCode::CONFLICT,
                    "no backup_dir is configured ([server] backup_dir)",
                ),
                Err(StartError::Refused(why)) => error(StatusCode::CONFLICT, &why),
            },
        };
        if is_job && !answer.status().is_success() {
            audit(&format!("refused ({})", answer.status()));
        }
        answer
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(answer) => answer,
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the action failed"),
    }
}

/// A freeze's length: `?seconds=N` or a JSON body `{"seconds": N}` (both at once: refused,
/// rather than one silently winning); neither: the volume's default.
fn freeze_seconds(query: &str, body: &[u8]) -> Result<Option<u32>, String> {
    let bad = || format!("seconds must be a whole number from 1 to {MAX_FREEZE_SECONDS}");
    let in_query = param(query, "seconds")
        .map(|s| s.parse::<u64>().map_err(|_| bad()))
        .transpose()?;
    let in_body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_string())?;
        match value.get("seconds") {
            None | Some(serde_json::Value::Null) => None,
            Some(n) => Some(n.as_u64().ok_or_else(bad)?),
        }
    };
    let given = match (in_query, in_body) {
        (Some(_), Some(_)) => {
            return Err("seconds is given twice (URL and body): give it once".to_string())
        }
        (query, body) => query.or(body),
    };
    match given {
        Some(n) if n == 0 || n > u64::from(MAX_FREEZE_SECONDS) => Err(bad()),
        Some(n) => Ok(Some(n as u32)),
        None => Ok(None),
    }
}

/// The value of `key` in a query string (no decoding: the parameters are numbers).
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(value).expect("our views serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(status: StatusCode, why: &str) -> Answer {
    json(status, &serde_json::json!({ "error": why }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_lengths() {
        assert_eq!(freeze_seconds("", b""), Ok(None));
        assert_eq!(freeze_seconds("seconds=30", b""), Ok(Some(30)));
        assert_eq!(freeze_seconds("", br#"{"seconds": 5}"#), Ok(Some(5)));
        assert!(freeze_seconds("seconds=0", b"").is_err());
        assert!(freeze_seconds("seconds=-1", b"").is_err());
        assert!(freeze_seconds("seconds=99999999999", b"").is_err());
        assert!(freeze_seconds("", b"{").is_err());
        assert!(freeze_seconds("seconds=9", br#"{"seconds": 7}"#).is_err());
        assert_eq!(freeze_seconds("seconds=9", b"{}"), Ok(Some(9)));
    }
}
