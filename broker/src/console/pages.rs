//! The console's pages and forms. Reads come from the broker's state (and the audit log);
//! every change calls the JSON API's handler with the signed-in admin as the caller, so
//! the role check, refusal and audit record are the API's own.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::InventoryResponse;
use serde_json::{Value, json};

use super::html::{self, Flash, Viewer, esc, table, time};
use super::session::{self, Session};
use super::{Console, html_response};
use crate::api::caller_request::CallerRequest;
use crate::api::handlers;
use crate::api::record;
use crate::audit::event::{Decision, EventKind, Evidence};
use crate::audit::search::{SearchFilter, search};
use crate::config::{Admin, Role};
use crate::state::AppState;

/// Records shown per audit-search page.
const PER_PAGE: usize = 50;
/// Longest form body the console reads.
const MAX_FORM: usize = 16 * 1024;

/// A signed-in admin making a request.
struct Signed {
    admin: Admin,
    session: Session,
    cookie: String,
    peer: SocketAddr,
}

impl Signed {
    fn viewer(&self) -> Viewer<'_> {
        let roles: Vec<&str> = self.admin.roles.iter().map(|r| r.as_str()).collect();
        Viewer {
            admin: &self.admin.name,
            roles: roles.join(", "),
            csrf: &self.session.csrf,
        }
    }

    /// The request the API handlers take, with this admin as the caller.
    fn caller_request(&self) -> CallerRequest {
        CallerRequest {
            peer: self.peer,
            headers: HeaderMap::new(),
            client_cert: None,
            console_admin: Some(self.admin.clone()),
        }
    }

    fn page(&self, title: &str, current: &str, body: &str) -> Response {
        let p = html::page(
            title,
            current,
            Some(&self.viewer()),
            self.session.flash.as_ref(),
            body,
        );
        html_response(StatusCode::OK, p)
    }
}

pub(super) fn console(st: &AppState) -> &Console {
    &st.console
}

/// A page for someone not signed in: the provider's sign-in button when `[console.oidc]`
/// is set, and how to get a one-time link.
pub(super) fn sign_in_page(st: &AppState, status: StatusCode, why: &str) -> Response {
    let sso = match &console(st).oidc {
        Some(o) => format!(
            "<p><a class=\"button\" id=\"oidc-signin\" href=\"/console/oidc/start\">Sign in with {}</a></p>",
            esc(&o.settings.display_name)
        ),
        None => String::new(),
    };
    let body = format!(
        "<p id=\"signin\">{}</p>{sso}<p>Or ask an operator with access to the broker's host for a \
         one-time login link: <code>broker console login --config CONFIG --admin NAME</code>.</p>",
        esc(why)
    );
    html_response(status, html::page("Sign in", "", None, None, &body))
}

/// The signed-in admin, or the sign-in page (401).
fn signed(st: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<Signed, Box<Response>> {
    let not_signed = || {
        Box::new(sign_in_page(
            st,
            StatusCode::UNAUTHORIZED,
            "You are not signed in (or your session ended). The console is for configured admins only.",
        ))
    };
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session::cookie_value)
        .ok_or_else(not_signed)?
        .to_owned();
    let now = st.clock.unix_secs();
    let session = console(st)
        .sessions
        .touch(&cookie, now)
        .ok_or_else(not_signed)?;
    let admin = match &session.oidc {
        // Fixed at sign-in by the provider; ends if the provider leaves the config.
        Some(a) if console(st).oidc.is_some() => a.clone(),
        Some(_) => return Err(not_signed()),
        // A session ends when its admin leaves the config.
        None => st
            .admins
            .iter()
            .find(|a| a.name == session.admin)
            .cloned()
            .ok_or_else(not_signed)?,
    };
    Ok(Signed {
        admin,
        session,
        cookie,
        peer,
    })
}

/// The fields of a form body.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    if body.len() > MAX_FORM {
        return Vec::new();
    }
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A state-changing form from `s`: its CSRF token must be the session's, and a browser's
/// `Origin` (when sent) this host's.
fn check_form(
    s: &Signed,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), Box<Response>> {
    let refused = |why: &str| {
        Box::new(html_response(
            StatusCode::FORBIDDEN,
            html::page(
                "Refused",
                "",
                Some(&s.viewer()),
                Some(&Flash::Refused(why.to_owned())),
                "",
            ),
        ))
    };
    if !field(form, "csrf").is_some_and(|t| s.session.csrf_ok(t)) {
        return Err(refused(
            "This form is stale or did not come from the console (CSRF token missing or wrong); reload the page and try again.",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        if origin != "null" && origin_host != host {
            return Err(refused("This form was sent from another site."));
        }
    }
    Ok(())
}

/// Status and JSON body of an API handler's answer.
async fn answer_of(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The flash for an API answer: `done` on success, else the API's own description.
fn flash_of(status: StatusCode, body: &Value, done: String) -> Flash {
    if status.is_success() {
        Flash::Done(done)
    } else {
        let code = body["error"].as_str().unwrap_or("refused");
        let why = body["error_description"].as_str().unwrap_or("");
        Flash::Refused(format!("Refused ({code}): {why}"))
    }
}

/// Keeps `flash` for the next page and sends the browser there (POST, redirect, GET).
fn after_action(st: &AppState, s: &Signed, flash: Flash, to: &str) -> Response {
    console(st).sessions.set_flash(&s.cookie, flash);
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Whether `s` holds any of `roles`; if not, the refusal is recorded (like the API's) and
/// a 403 page answers.
async fn require_any(
    st: &AppState,
    s: &Signed,
    roles: &[Role],
    what: &str,
) -> Result<(), Response> {
    if roles.iter().any(|r| s.admin.has(*r)) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let why = format!(
        "admin {} lacks the role to see {what} ({} needed)",
        s.admin.name,
        names.join(" or ")
    );
    let mut ev = record::event(EventKind::Denied, s.peer);
    ev.actor = Some(format!("admin:{}", s.admin.name));
    ev.evidence = Some(console_evidence());
    let _ = crate::api::refusal::deny(
        st,
        ev,
        crate::api::refusal::CallRefusal::RoleRequired { what: why.clone() },
    )
    .await;
    Err(html_response(
        StatusCode::FORBIDDEN,
        html::page(
            "Refused",
            "",
            Some(&s.viewer()),
            Some(&Flash::Refused(why)),
            "",
        ),
    ))
}

pub(super) fn console_evidence() -> Evidence {
    Evidence {
        kind: "console_session",
        ..Default::default()
    }
}

macro_rules! signed_or_return {
    ($st:expr, $headers:expr, $peer:expr) => {
        match signed(&$st, &$headers, $peer) {
            Ok(s) => s,
            Err(res) => return *res,
        }
    };
}

// --- sign in and out ---------------------------------------------------------------------

/// `GET /console/login?ticket=…`: a confirmation form (a link preview must not consume
/// the ticket; only the POST does).
pub(super) async fn login_form(Query(q): Query<Vec<(String, String)>>) -> Response {
    let ticket = field(&q, "ticket").unwrap_or("");
    let body = format!(
        "<form method=\"post\" action=\"/console/login\" id=\"login\">\
         <input type=\"hidden\" name=\"ticket\" value=\"{}\">\
         <p>This one-time link signs you in to the broker console.</p>\
         <button type=\"submit\" id=\"signin-button\">Sign in</button></form>",
        esc(ticket)
    );
    html_response(StatusCode::OK, html::page("Sign in", "", None, None, &body))
}

/// `POST /console/login`: consumes the ticket, records the sign-in, starts the session.
pub(super) async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let form = form_fields(&body);
    let c = console(&st);
    let now = st.clock.unix_secs();
    let mut ev = record::event(EventKind::ConsoleLogin, peer);
    ev.evidence = Some(console_evidence());
    let redeemed = session::redeem_ticket(&c.state_dir, field(&form, "ticket").unwrap_or(""), now)
        .map_err(|r| r.reason().to_owned())
        .and_then(|name| {
            st.admins
                .iter()
                .find(|a| a.name == name)
                .cloned()
                .ok_or_else(|| {
                    format!("the ticket names {name}, who is no longer a configured admin")
                })
        });
    let admin = match redeemed {
        Ok(a) => a,
        Err(reason) => {
            ev.decision = Some(Decision::Deny);
            ev.rule = Some("console_login_refused".into());
            ev.reason = Some(reason);
            if let Err(e) = st.audit.append(ev).await {
                tracing::error!(error = %e, "could not record a refused console sign-in");
            }
            return sign_in_page(
                &st,
                StatusCode::UNAUTHORIZED,
                "This login link is not valid: it was used already, it expired, or it was never issued.",
            );
        }
    };
    ev.decision = Some(Decision::Allow);
    ev.actor = Some(format!("admin:{}", admin.name));
    // Recorded first: no session without its record.
    if let Err(e) = st.audit.append(ev).await {
        tracing::error!(error = %e, "console sign-in not recorded; refused");
        return sign_in_page(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in could not be recorded in the audit log, so it was refused. Try again later.",
        );
    }
    let cookie = match c.sessions.start(&admin.name, now) {
        Ok(k) => k,
        Err(_) => {
            return sign_in_page(
                &st,
                StatusCode::SERVICE_UNAVAILABLE,
                "No session could be made.",
            );
        }
    };
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&session_cookie(c, &cookie)) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The `Set-Cookie` value of a new session.
pub(super) fn session_cookie(c: &Console, cookie: &str) -> String {
    let secure = if c.secure_cookie { "; Secure" } else { "" };
    format!(
        "{}={cookie}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session::COOKIE,
        session::LIFETIME
    )
}

/// `POST /console/logout`.
pub(super) async fn logout(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    let form = form_fields(&body);
    if let Err(res) = check_form(&s, &headers, &form) {
        return *res;
    }
    console(&st).sessions.end(&s.cookie);
    let mut ev = record::event(EventKind::ConsoleLogout, peer);
    ev.actor = Some(format!("admin:{}", s.admin.name));
    ev.evidence = Some(console_evidence());
    if let Err(e) = st.audit.append(ev).await {
        tracing::error!(error = %e, "could not record a console sign-out");
    }
    let mut res = sign_in_page(&st, StatusCode::OK, "You are signed out.");
    let clear = format!(
        "{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

// --- inventory ---------------------------------------------------------------------------

/// `GET /console`: the inventory (the API's, with 30-day unused grants).
pub(super) async fn inventory(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    let q = handlers::inventory::InventoryQuery::unused_within("30d");
    let res =
        handlers::inventory::inventory(State(st.clone()), s.caller_request(), Ok(Query(q))).await;
    let (status, body) = answer_of(res).await;
    if !status.is_success() {
        let flash = flash_of(status, &body, String::new());
        let p = html::page("Inventory", "/console", Some(&s.viewer()), Some(&flash), "");
        return html_response(status, p);
    }
    let Ok(inv) = serde_json::from_value::<InventoryResponse>(body) else {
        return s.page(
            "Inventory",
            "/console",
            "<p>The inventory could not be read.</p>",
        );
    };
    let rows: Vec<Vec<String>> = inv
        .identities
        .iter()
        .map(|e| {
            let open = e
                .anomalies
                .iter()
                .filter(|a| a.acknowledged_by.is_none())
                .count();
            vec![
                format!("<span class=\"identity\">{}</span>", esc(&e.id)),
                esc(&e.owner),
                esc(&e.steward),
                esc(&e.environment),
                format!("<span class=\"status-{0}\">{0}</span>", esc(&e.status)),
                time(e.last_issued),
                e.tokens_24h.to_string(),
                esc(&e.expires),
                esc(&e.unused_tasks.clone().unwrap_or_default().join(", ")),
                esc(&e.unused_scopes.clone().unwrap_or_default().join(", ")),
                open.to_string(),
            ]
        })
        .collect();
    let body = table(
        "inventory",
        &[
            "identity",
            "owner",
            "steward",
            "environment",
            "status",
            "last issued",
            "tokens (24 h)",
            "recertification due",
            "tasks unused (30 d)",
            "scopes unused (30 d)",
            "open anomalies",
        ],
        &rows,
    );
    s.page("Inventory", "/console", &body)
}

// --- anomalies ---------------------------------------------------------------------------

/// `GET /console/anomalies`.
pub(super) async fn anomalies(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    if let Err(res) = require_any(&st, &s, &[Role::ReadAudit, Role::Revoke], "anomalies").await {
        return res;
    }
    let rows: Vec<Vec<String>> = st
        .governance
        .monitor
        .all()
        .iter()
        .map(|a| {
            let state = match &a.acknowledged_by {
                Some(by) => format!("acknowledged by {}", esc(by)),
                None => format!(
                    "<form class=\"inline\" method=\"post\" action=\"/console/anomalies/{}/ack\">{}\
                     <button type=\"submit\" class=\"ack\" data-anomaly=\"{0}\">Acknowledge</button></form>",
                    esc(&a.id),
                    html::csrf_field(&s.session.csrf)
                ),
            };
            vec![
                esc(&a.id),
                esc(&a.identity),
                esc(a.kind),
                time(Some(a.at)),
                esc(&format!("{:?}", a.action).to_lowercase()),
                esc(&a.evidence.to_string()),
                state,
            ]
        })
        .collect();
    let body = table(
        "anomalies",
        &[
            "id", "identity", "kind", "at", "action", "evidence", "state",
        ],
        &rows,
    );
    s.page("Anomalies", "/console/anomalies", &body)
}

/// A form posted for one object `id` (an anomaly, a grant): checked, passed to the API's
/// handler `call` with the signed-in admin as the caller, answered with a flash on the
/// page `back` (`done` words the success from the API's answer).
async fn id_action<F, Fut>(
    st: AppState,
    (peer, headers, body): (SocketAddr, HeaderMap, Bytes),
    id: String,
    back: &str,
    call: F,
    done: impl FnOnce(&str, &Value) -> String,
) -> Response
where
    F: FnOnce(AppState, Path<String>, CallerRequest) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let s = signed_or_return!(st, headers, peer);
    if let Err(res) = check_form(&s, &headers, &form_fields(&body)) {
        return *res;
    }
    let res = call(st.clone(), Path(id.clone()), s.caller_request()).await;
    let (status, answer) = answer_of(res).await;
    let flash = flash_of(status, &answer, done(&id, &answer));
    after_action(&st, &s, flash, back)
}

/// `POST /console/anomalies/{id}/ack`.
pub(super) async fn ack_anomaly(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = |st, id, req| handlers::admin::ack_anomaly(State(st), id, req);
    let done = |id: &str, _: &Value| format!("Anomaly {id} acknowledged.");
    id_action(
        st,
        (peer, headers, body),
        id,
        "/console/anomalies",
        call,
        done,
    )
    .await
}

// --- break-glass -------------------------------------------------------------------------

/// `GET /console/break-glass`: every grant with its two-person state.
pub(super) async fn break_glass(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    let roles = [Role::BreakGlassApprove, Role::ReadAudit, Role::Revoke];
    if let Err(res) = require_any(&st, &s, &roles, "break-glass grants").await {
        return res;
    }
    let csrf = html::csrf_field(&s.session.csrf);
    let rows: Vec<Vec<String>> = st
        .break_glass
        .grants
        .all()
        .iter()
        .map(|g| {
            let status = format!("{:?}", g.status).to_lowercase();
            let approvers: Vec<&str> = g.approvals.iter().map(|a| a.approver.as_str()).collect();
            let rule = format!(
                "{} of {} approval(s){}; the requester ({}) may not approve",
                g.approvals.len(),
                g.approvals_needed,
                if approvers.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", approvers.join(", "))
                },
                g.requester
            );
            let mut actions = String::new();
            if status == "pending" {
                actions.push_str(&format!(
                    "<form class=\"inline\" method=\"post\" action=\"/console/break-glass/{}/approve\">{csrf}\
                     <button type=\"submit\" class=\"approve\" data-grant=\"{0}\">Approve</button></form>",
                    esc(&g.id)
                ));
            }
            if status != "closed" {
                actions.push_str(&format!(
                    "<form class=\"inline\" method=\"post\" action=\"/console/break-glass/{}/close\">{csrf}\
                     <button type=\"submit\" class=\"close\" data-grant=\"{0}\">Close</button></form>",
                    esc(&g.id)
                ));
            }
            vec![
                esc(&g.id),
                esc(&g.identity),
                esc(&g.task),
                esc(&g.policy),
                esc(&g.requester),
                esc(&g.justification),
                esc(&g.ticket),
                format!("<span class=\"grant-status\">{}</span>", esc(&status)),
                esc(&rule),
                time(g.ends_at),
                actions,
            ]
        })
        .collect();
    let body = table(
        "grants",
        &[
            "grant",
            "identity",
            "task",
            "policy",
            "requester",
            "justification",
            "ticket",
            "status",
            "two-person rule",
            "ends",
            "",
        ],
        &rows,
    );
    s.page("Break-glass", "/console/break-glass", &body)
}

/// `POST /console/break-glass/{id}/approve`.
pub(super) async fn approve_grant(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = |st, id, req| handlers::break_glass::approve(State(st), id, req);
    let done = |id: &str, answer: &Value| {
        let state = answer["status"].as_str().unwrap_or("updated");
        format!("Grant {id} approved: now {state}.")
    };
    id_action(
        st,
        (peer, headers, body),
        id,
        "/console/break-glass",
        call,
        done,
    )
    .await
}

/// `POST /console/break-glass/{id}/close`.
pub(super) async fn close_grant(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = |st, id, req| handlers::break_glass::close(State(st), id, req);
    let done = |id: &str, _: &Value| format!("Grant {id} closed; its tokens are revoked.");
    id_action(
        st,
        (peer, headers, body),
        id,
        "/console/break-glass",
        call,
        done,
    )
    .await
}

// --- revocations -------------------------------------------------------------------------

/// `GET /console/revocations`: the live revocations and a revoke-by-`jti` form.
pub(super) async fn revocations(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    if let Err(res) = require_any(&st, &s, &[Role::ReadAudit, Role::Revoke], "revocations").await {
        return res;
    }
    let now = st.clock.unix_secs();
    let (entries, _) = st.revocations.feed(0, now);
    let rows: Vec<Vec<String>> = entries
        .iter()
        .rev()
        .map(|e| {
            let what = match (&e.jti, &e.rule) {
                (Some(j), _) => format!("<span class=\"revoked-jti\">{}</span>", esc(j)),
                (None, Some(r)) => esc(&format!(
                    "rule {}: {} (issued before {})",
                    r.id,
                    serde_json::to_string(&r.selector).unwrap_or_default(),
                    time(Some(r.issued_before))
                )),
                (None, None) => String::new(),
            };
            vec![e.cursor.to_string(), what, time(Some(e.until))]
        })
        .collect();
    let form = format!(
        "<form method=\"post\" action=\"/console/revocations\" id=\"revoke-form\"><fieldset>\
         <legend>Revoke a token</legend>{}\
         <label>jti <input name=\"jti\" id=\"revoke-jti\" size=\"40\" maxlength=\"200\" required></label> \
         <label>reason <input name=\"reason\" id=\"revoke-reason\" size=\"40\" maxlength=\"500\" required></label> \
         <button type=\"submit\" id=\"revoke-button\">Revoke</button></fieldset></form>",
        html::csrf_field(&s.session.csrf)
    );
    let body = format!(
        "{form}{}",
        table(
            "revocations",
            &["cursor", "revoked", "relevant until"],
            &rows
        )
    );
    s.page("Revocations", "/console/revocations", &body)
}

/// `POST /console/revocations`: revoke one token by `jti`.
pub(super) async fn revoke(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    let form = form_fields(&body);
    if let Err(res) = check_form(&s, &headers, &form) {
        return *res;
    }
    let jti = field(&form, "jti").unwrap_or("").trim().to_owned();
    let reason = field(&form, "reason").unwrap_or("").to_owned();
    let api_body = json!({ "jti": jti, "reason": reason }).to_string();
    let res =
        handlers::admin::revocations(State(st.clone()), s.caller_request(), Bytes::from(api_body))
            .await;
    let (status, body) = answer_of(res).await;
    let flash = flash_of(status, &body, format!("Token {jti} revoked."));
    after_action(&st, &s, flash, "/console/revocations")
}

// --- signing keys ------------------------------------------------------------------------

/// `GET /console/keys`: the signing keys and their states (the API's list).
pub(super) async fn keys(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    let (status, body) =
        answer_of(handlers::keys::list(State(st.clone()), s.caller_request()).await).await;
    if !status.is_success() {
        let flash = flash_of(status, &body, String::new());
        let p = html::page(
            "Signing keys",
            "/console/keys",
            Some(&s.viewer()),
            Some(&flash),
            "",
        );
        return html_response(status, p);
    }
    let rows: Vec<Vec<String>> = body
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|k| {
                    let s = |f: &str| esc(k[f].as_str().unwrap_or(""));
                    let t = |f: &str| time(k[f].as_u64());
                    vec![
                        s("kid"),
                        s("alg"),
                        format!("<span class=\"key-state\">{}</span>", s("state")),
                        s("replica"),
                        t("prepared_at"),
                        t("activate_at"),
                        t("retire_at"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let body = table(
        "keys",
        &[
            "kid",
            "alg",
            "state",
            "replica",
            "prepared",
            "activates",
            "retires",
        ],
        &rows,
    );
    s.page("Signing keys", "/console/keys", &body)
}

// --- audit search ------------------------------------------------------------------------

/// `GET /console/audit?identity=&task=&jti=&event=&actor=&from=&to=&page=`: matching
/// records, newest first, and whether the chain verifies.
pub(super) async fn audit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let s = signed_or_return!(st, headers, peer);
    if let Err(res) = require_any(&st, &s, &[Role::ReadAudit], "the audit log").await {
        return res;
    }
    let text = |name: &str| {
        field(&q, name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(200).collect::<String>())
    };
    let filter = SearchFilter {
        identity: text("identity"),
        task: text("task"),
        jti: text("jti"),
        event: text("event"),
        actor: text("actor"),
        from: text("from"),
        to: text("to"),
    };
    let page: usize = text("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
        .min(100_000);
    let c = console(&st);
    let (dir, key_dir, published) = (c.audit_dir.clone(), c.key_dir.clone(), st.minter.jwks());
    let f = filter.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut keys = (*published).clone();
        for k in crate::mint::lifecycle::retired_public_keys(&key_dir).keys {
            if !keys.keys.iter().any(|x| x.kid == k.kid) {
                keys.keys.push(k);
            }
        }
        let chain = crate::audit::verify(&dir, &keys);
        (search(&dir, &f, page, PER_PAGE), chain)
    })
    .await;
    let Ok((results, chain)) = found else {
        return s.page("Audit log", "/console/audit", "<p>The search failed.</p>");
    };
    let chain_html = match chain {
        Ok(r) => format!(
            "<p class=\"chain-ok\" id=\"chain\">Chain verified: {} records in {} segment(s), last seq {}, \
             anchor signed by {} ({} record(s) after the anchor).</p>",
            r.records,
            r.segments,
            r.last_seq,
            esc(&r.anchor_kid),
            r.unanchored
        ),
        Err(e) => format!(
            "<p class=\"chain-bad\" id=\"chain\">Chain verification FAILED: {}</p>",
            esc(&e.to_string())
        ),
    };
    let input = |name: &str, label: &str| {
        format!(
            "<label>{label} <input name=\"{name}\" id=\"q-{name}\" value=\"{}\" maxlength=\"200\"></label> ",
            esc(&text(name).unwrap_or_default())
        )
    };
    let mut body = format!(
        "{chain_html}<form method=\"get\" action=\"/console/audit\" id=\"search\"><fieldset><legend>Search</legend>\
         {}{}{}{}{}{}{}<button type=\"submit\" id=\"search-button\">Search</button></fieldset></form>",
        input("identity", "identity"),
        input("task", "task"),
        input("jti", "jti"),
        input("event", "event"),
        input("actor", "actor"),
        input("from", "from (UTC, e.g. 2026-12-04T10:00)"),
        input("to", "to"),
    );
    let page_of = match results {
        Ok(p) => p,
        Err(e) => {
            body.push_str(&format!(
                "<p>The log could not be read: {}</p>",
                esc(&e.to_string())
            ));
            return s.page("Audit log", "/console/audit", &body);
        }
    };
    let rows: Vec<Vec<String>> = page_of
        .records
        .iter()
        .map(|r| {
            let f = |n: &str| esc(r[n].as_str().unwrap_or(""));
            vec![
                r["seq"].as_u64().map(|n| n.to_string()).unwrap_or_default(),
                f("ts"),
                format!("<span class=\"event\">{}</span>", f("event")),
                f("decision"),
                f("identity"),
                f("task"),
                format!("<span class=\"jti\">{}</span>", f("jti")),
                f("actor"),
                f("rule"),
                f("reason"),
            ]
        })
        .collect();
    body.push_str(&table(
        "records",
        &[
            "seq", "time", "event", "decision", "identity", "task", "jti", "actor", "rule",
            "reason",
        ],
        &rows,
    ));
    let link = |p: usize| {
        let mut params: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("identity", &filter.identity),
            ("task", &filter.task),
            ("jti", &filter.jti),
            ("event", &filter.event),
            ("actor", &filter.actor),
            ("from", &filter.from),
            ("to", &filter.to),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        params.push(("page", p.to_string()));
        esc(&format!(
            "/console/audit?{}",
            serde_urlencoded::to_string(params).unwrap_or_default()
        ))
    };
    body.push_str("<p class=\"pages\">");
    if page > 0 {
        body.push_str(&format!(
            "<a href=\"{}\" id=\"newer\">newer</a> ",
            link(page - 1)
        ));
    }
    body.push_str(&format!("page {}", page + 1));
    if page_of.more {
        body.push_str(&format!(
            " <a href=\"{}\" id=\"older\">older</a>",
            link(page + 1)
        ));
    }
    body.push_str("</p>");
    s.page("Audit log", "/console/audit", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_bounded_and_read() {
        let f = form_fields(b"csrf=a&jti=j-1&reason=lost+laptop");
        assert_eq!(field(&f, "jti"), Some("j-1"));
        assert_eq!(field(&f, "reason"), Some("lost laptop"));
        assert!(form_fields(&vec![b'a'; MAX_FORM + 1]).is_empty());
    }

    #[test]
    fn an_api_refusal_becomes_its_description() {
        let body = json!({"error": "access_denied", "error_description": "admin auditor lacks the revoke role"});
        match flash_of(StatusCode::FORBIDDEN, &body, "x".into()) {
            Flash::Refused(m) => assert!(m.contains("lacks the revoke role"), "{m}"),
            Flash::Done(_) => panic!("a refusal"),
        }
        assert!(
            matches!(flash_of(StatusCode::OK, &body, "ok".into()), Flash::Done(m) if m == "ok")
        );
    }

    #[test]
    fn the_audit_event_of_a_console_call_names_the_session() {
        let ev: crate::audit::event::AuditEvent = {
            let mut e = record::event(EventKind::ConsoleLogin, "127.0.0.1:1".parse().unwrap());
            e.evidence = Some(console_evidence());
            e
        };
        assert_eq!(ev.evidence.unwrap().kind, "console_session");
    }
}
