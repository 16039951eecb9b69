//! Console sign-in through an OpenID Connect provider (issue 15): authorization code with
//! PKCE `S256`, `state` bound to the browser by a cookie, the ID token's signature,
//! audience and `nonce` checked, admin roles from its `groups` claim. The provider is the
//! loopback one in `broker_tests::oidc_idp`, which checks the client secret and the PKCE
//! verifier as a real one would. One test signs in with headless Chromium; the others drive
//! the redirects by hand to present what an attacker or a broken provider would, and check
//! each refusal's page, status and audit record, and that no code or token is recorded.

use std::net::TcpListener;

use broker_tests::oidc_idp::{
    ADMIN_GROUP, APPROVER_GROUP, CLIENT_SECRET, IdpUser, Tamper, TestIdp, console_oidc_toml,
};
use broker_tests::pki::tools_present;
use broker_tests::webdriver::Browser;
use broker_tests::{Options, TestBroker, audit_bytes, contains_bytes, verify_audit};
use serde_json::Value;

const STATE_COOKIE: &str = "broker_console_oidc";
const SESSION_COOKIE: &str = "broker_console";

/// A broker whose console signs in through `idp`. The callback URL is registered before
/// the broker starts, so the broker gets a port chosen here.
fn start(idp: &TestIdp) -> TestBroker {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let opts = Options {
        extra_toml: console_oidc_toml(idp, &format!("http://127.0.0.1:{port}")),
        ..Options::default()
    };
    let mut b = TestBroker::prepare(opts);
    let config = std::fs::read_to_string(b.config_path()).unwrap();
    assert!(config.contains("addr = \"127.0.0.1:0\""), "{config}");
    std::fs::write(
        b.config_path(),
        config.replace(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    let secret = b.dir().join("console-oidc.secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    b.launch().unwrap_or_else(|e| panic!("{e}"));
    b
}

/// A client that follows no redirect and keeps no cookie: each step is the test's.
fn manual_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            first
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get(reqwest::header::LOCATION)
        .unwrap_or_else(|| panic!("a Location header: {res:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn query_param(url: &str, key: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// One browser's sign-in, step by step.
struct Flow {
    /// The binding cookie's value (the `state`).
    state_cookie: String,
    /// Where the provider sends the browser back: the callback URL with `code` and `state`.
    callback: String,
}

/// `/console/oidc/start`, then the provider's `/authorize` (which redirects back at once).
async fn begin(c: &reqwest::Client, b: &TestBroker, idp: &TestIdp) -> Flow {
    let res = c
        .get(format!("{}/console/oidc/start", b.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "{res:?}");
    let authorize = location(&res);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", idp.issuer())),
        "{authorize}"
    );
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", "broker-console"),
        ("code_challenge_method", "S256"),
        ("scope", "openid email groups"),
    ] {
        assert_eq!(query_param(&authorize, k).as_deref(), Some(v), "{k}");
    }
    let state_cookie = set_cookie(&res, STATE_COOKIE).expect("the binding cookie");
    assert_eq!(
        query_param(&authorize, "state").as_deref(),
        Some(state_cookie.as_str())
    );
    let back = c.get(&authorize).send().await.unwrap();
    assert_eq!(back.status(), 302, "{back:?}");
    let callback = location(&back);
    assert!(
        callback.starts_with(&format!("{}/console/oidc/callback?", b.base_url())),
        "{callback}"
    );
    Flow {
        state_cookie,
        callback,
    }
}

/// The callback with `cookie` as the binding cookie: (status, page, session cookie).
async fn finish(
    c: &reqwest::Client,
    callback: &str,
    cookie: Option<&str>,
) -> (u16, String, Option<String>) {
    let mut req = c.get(callback);
    if let Some(v) = cookie {
        req = req.header(reqwest::header::COOKIE, format!("{STATE_COOKIE}={v}"));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let session = set_cookie(&res, SESSION_COOKIE);
    (status, res.text().await.unwrap(), session)
}

fn logins(b: &TestBroker) -> Vec<Value> {
    b.records_of("console_login")
}

/// The last `console_login` record: a deny with `rule`, whose reason mentions `why`.
fn assert_refused(b: &TestBroker, rule: &str, why: &str) {
    let all = logins(b);
    let last = all.last().expect("a console_login record");
    assert_eq!(last["decision"], "deny", "{last:#}");
    assert_eq!(last["rule"], rule, "{last:#}");
    assert!(
        last["reason"].as_str().unwrap_or("").contains(why),
        "{why:?} in {last:#}"
    );
    assert_eq!(last["evidence"]["kind"], "oidc", "{last:#}");
    assert!(last.get("actor").is_none_or(Value::is_null), "{last:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_through_the_identity_provider_in_a_browser() {
    if !tools_present(
        "a_person_signs_in_through_the_identity_provider_in_a_browser",
        &["chromium", "chromedriver"],
    ) {
        return;
    }
    let idp = TestIdp::start().await;
    idp.sign_in_as(Some(IdpUser::new("alice", &["engineering", ADMIN_GROUP])));
    let b = start(&idp);
    let browser = Browser::start().await;
    let shots =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");

    browser.goto(&format!("{}/console", b.base_url())).await;
    let page = browser.wait_for("id=\"oidc-signin\"").await;
    assert!(page.contains("Sign in with Example SSO"), "{page}");
    browser.screenshot(&shots.join("00-sign-in-sso.png")).await;
    browser.click("#oidc-signin").await;
    // To the provider (cross-site), back to the callback, then to the console.
    browser.wait_for("id=\"whoami\"").await;
    assert!(
        browser.url().await.ends_with("/console"),
        "{}",
        browser.url().await
    );
    assert!(
        browser.text("#whoami").await.contains("alice@example.com"),
        "{}",
        browser.text("#whoami").await
    );
    // The session works for the admin pages; the binding cookie is gone.
    browser
        .goto(&format!("{}/console/keys", b.base_url()))
        .await;
    browser.wait_for("id=\"whoami\"").await;

    let all = logins(&b);
    assert_eq!(all.len(), 1, "{all:#?}");
    let r = &all[0];
    assert_eq!(r["decision"], "allow", "{r:#}");
    assert_eq!(r["actor"], "admin:alice@example.com");
    assert_eq!(r["evidence"]["kind"], "oidc");
    assert_eq!(r["evidence"]["issuer"], idp.issuer());
    assert_eq!(r["evidence"]["subject"], "00u-alice");
    assert_eq!(r["evidence"]["kid"], "test-ec-1");
    assert!(r["reason"].as_str().unwrap().contains("admin"), "{r:#}");
    let bytes = audit_bytes(&b.audit_dir());
    for s in idp.secrets() {
        assert!(
            !contains_bytes(&bytes, s.as_bytes()),
            "a provider secret in the log"
        );
    }
    assert!(!contains_bytes(&bytes, CLIENT_SECRET.as_bytes()));
    let v = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(v.success(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_works_once_in_the_browser_that_started_it_with_the_mapped_roles() {
    let idp = TestIdp::start().await;
    idp.sign_in_as(Some(IdpUser::new("bob", &[APPROVER_GROUP])));
    let b = start(&idp);
    let c = manual_client();

    let flow = begin(&c, &b, &idp).await;
    let (status, page, session) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("url=/console"), "{page}");
    let session = session.expect("a session cookie");
    // bob may approve break-glass only: that page opens, the audit search does not.
    let get = |path: &str| {
        c.get(format!("{}{path}", b.base_url()))
            .header(
                reqwest::header::COOKIE,
                format!("{SESSION_COOKIE}={session}"),
            )
            .send()
    };
    let grants = get("/console/break-glass").await.unwrap();
    assert_eq!(grants.status(), 200);
    assert!(grants.text().await.unwrap().contains("bob@example.com"));
    let audit = get("/console/audit").await.unwrap();
    assert_eq!(audit.status(), 403);
    assert_eq!(logins(&b).last().unwrap()["decision"], "allow");

    // The same answer again (a replay, or the back button): the flow is gone.
    let (status, page, session) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!(status, 401, "{page}");
    assert!(
        page.contains("not valid here") && session.is_none(),
        "{page}"
    );
    assert_refused(&b, "console_oidc_state", "no sign-in in progress");

    // An answer brought to a browser that did not start the flow (login CSRF): no cookie,
    // or another flow's cookie. Either way the flow is spent.
    let flow = begin(&c, &b, &idp).await;
    let (status, _, session) = finish(&c, &flow.callback, None).await;
    assert_eq!((status, session), (401, None));
    assert_refused(&b, "console_oidc_state", "did not start this sign-in");
    let (status, _, _) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!(status, 401);
    let mine = begin(&c, &b, &idp).await;
    let theirs = begin(&c, &b, &idp).await;
    let (status, _, session) = finish(&c, &theirs.callback, Some(&mine.state_cookie)).await;
    assert_eq!((status, session), (401, None));
    assert_refused(&b, "console_oidc_state", "did not start this sign-in");

    // No state at all.
    let (status, _, _) = finish(
        &c,
        &format!("{}/console/oidc/callback?code=abc", b.base_url()),
        Some(&mine.state_cookie),
    )
    .await;
    assert_eq!(status, 401);
    assert_refused(&b, "console_oidc_state", "without a state");

    // Code injection: an attacker's code put into a victim's flow. The state and cookie
    // are the victim's, but the code was issued for the attacker's PKCE challenge, so the
    // provider refuses the victim's verifier.
    idp.sign_in_as(Some(IdpUser::new("mallory", &[ADMIN_GROUP])));
    let attacker = begin(&c, &b, &idp).await;
    let stolen = query_param(&attacker.callback, "code").unwrap();
    idp.sign_in_as(Some(IdpUser::new("bob", &[APPROVER_GROUP])));
    let victim = begin(&c, &b, &idp).await;
    let state = query_param(&victim.callback, "state").unwrap();
    let injected = format!(
        "{}/console/oidc/callback?code={stolen}&state={state}",
        b.base_url()
    );
    let (status, page, session) = finish(&c, &injected, Some(&victim.state_cookie)).await;
    assert_eq!((status, session), (401, None), "{page}");
    assert_refused(&b, "console_oidc_code_refused", "PKCE verification failed");
    assert!(
        idp.token_refusals()
            .iter()
            .any(|r| r.contains("PKCE verification failed")),
        "{:?}",
        idp.token_refusals()
    );

    // The provider says no.
    idp.sign_in_as(None);
    let flow = begin(&c, &b, &idp).await;
    let (status, _, _) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!(status, 401);
    assert_refused(&b, "console_oidc_provider_error", "access_denied");

    let allowed = logins(&b)
        .iter()
        .filter(|r| r["decision"] == "allow")
        .count();
    assert_eq!(allowed, 1, "one sign-in only");
    let bytes = audit_bytes(&b.audit_dir());
    for s in idp.secrets() {
        assert!(
            !contains_bytes(&bytes, s.as_bytes()),
            "a provider secret in the log"
        );
    }
    let v = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(v.success(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn id_tokens_that_fail_a_check_and_people_without_a_mapped_group_are_refused() {
    let idp = TestIdp::start().await;
    let b = start(&idp);
    let c = manual_client();

    // Someone the provider knows, in no group the broker maps: 403, the groups named.
    idp.sign_in_as(Some(IdpUser::new("carol", &["engineering", "sales"])));
    let flow = begin(&c, &b, &idp).await;
    let (status, page, session) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!((status, session), (403, None), "{page}");
    assert!(page.contains("none of your groups"), "{page}");
    assert_refused(&b, "console_oidc_no_role", "engineering, sales");

    idp.sign_in_as(Some(IdpUser::new("dave", &[ADMIN_GROUP])));
    for (tamper, rule, why) in [
        (
            Tamper::BadSignature,
            "console_oidc_id_token",
            "ID token refused",
        ),
        (
            Tamper::Unsigned,
            "console_oidc_id_token",
            "ID token refused",
        ),
        (
            Tamper::OtherAudience,
            "console_oidc_id_token",
            "ID token refused",
        ),
        (Tamper::WrongNonce, "console_oidc_id_token", "nonce"),
    ] {
        idp.tamper(tamper);
        let flow = begin(&c, &b, &idp).await;
        let (status, page, session) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
        assert_eq!((status, session), (401, None), "{tamper:?}: {page}");
        assert!(page.contains("could not be verified"), "{page}");
        assert_refused(&b, rule, why);
    }
    // And with the provider fixed, dave gets in.
    idp.tamper(Tamper::None);
    let flow = begin(&c, &b, &idp).await;
    let (status, page, session) = finish(&c, &flow.callback, Some(&flow.state_cookie)).await;
    assert_eq!(status, 200, "{page}");
    assert!(session.is_some());
    let all = logins(&b);
    assert_eq!(all.len(), 6, "{all:#?}");
    assert_eq!(all.last().unwrap()["actor"], "admin:dave@example.com");
    let v = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(v.success(), "{v}");
}
