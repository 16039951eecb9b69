//! The operator console (issue 15) in a real browser: headless Chromium driven through
//! WebDriver (chromedriver) against the real broker binary. One admin signs in with a
//! one-time link and sees the inventory, acknowledges a `deny` anomaly (the held identity
//! gets tokens again), a second admin approves a break-glass request, a token is revoked
//! from the revoke form and introspects inactive, and the audit search finds its records
//! with the chain verified. Someone not signed in, a used link, an unknown admin, a missing
//! role and a forged form are refused. Screenshots of each page go to
//! `target/console-screenshots/` (copied into `docs/console/` for the README).

use std::path::PathBuf;

use broker_tests::admin::revocation_registry;
use broker_tests::break_glass::{
    APPROVER, BreakGlassOptions, SUPERVISOR, break_glass_policies, commander_bearer, grant_id,
    ledger_grant_body, oncall_file, supervisor_bearer, write_break_glass_files,
};
use broker_tests::governance::{
    GUARDED, GUARDED_SUBJECT, SYNC_READ, SYNC_WRITE, guarded_file, sync_tasks,
};
use broker_tests::pki::tools_present;
use broker_tests::policy::entries;
use broker_tests::webdriver::Browser;
use broker_tests::{
    IDENTITY, Options, SUBJECT, TASK, TestBroker, TokenRequest, insecure_claims, rs256, run_broker,
};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("console-screenshots")
}

fn start() -> TestBroker {
    let mut registry = revocation_registry();
    registry.push(guarded_file(&sync_tasks()));
    registry.push(oncall_file());
    let opts = Options {
        policies: entries(&registry),
        extra_toml: BreakGlassOptions::default().extra_toml(),
        ..Options::default()
    };
    let mut b = TestBroker::prepare(opts);
    write_break_glass_files(&b.dir().join("policies"), &break_glass_policies());
    b.launch().unwrap_or_else(|e| panic!("{e}"));
    b
}

/// `broker console login --admin ADMIN --url <the broker>`.
fn console_login(b: &TestBroker, admin: &str) -> broker_tests::CmdOutput {
    run_broker([
        "console",
        "login",
        "--config",
        b.config_path().to_str().unwrap(),
        "--admin",
        admin,
        "--url",
        b.base_url(),
    ])
}

/// `broker console login` for `admin`: the one-time link.
fn login_link(b: &TestBroker, admin: &str) -> String {
    let out = console_login(b, admin);
    assert!(out.success(), "console login: {out}");
    let link = out.stdout.trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/console/login?ticket=", b.base_url())),
        "{link}"
    );
    link
}

async fn sign_in(browser: &Browser, b: &TestBroker, admin: &str) {
    browser.clear_cookies().await;
    browser.goto(&login_link(b, admin)).await;
    browser.click("#signin-button").await;
    browser.wait_for("id=\"whoami\"").await;
    assert!(
        browser.url().await.ends_with("/console"),
        "{}",
        browser.url().await
    );
    assert!(browser.text("#whoami").await.contains(admin));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_reviews_acknowledges_approves_revokes_and_searches_in_a_browser() {
    if !tools_present(
        "an_admin_reviews_acknowledges_approves_revokes_and_searches_in_a_browser",
        &["chromium", "chromedriver"],
    ) {
        return;
    }
    let b = start();
    let browser = Browser::start().await;
    let shots = screenshots();
    let base = b.base_url().to_owned();

    // Not signed in: the sign-in page, no data.
    browser.goto(&format!("{base}/console")).await;
    let page = browser.source().await;
    assert!(
        page.contains("not signed in") && !page.contains(IDENTITY),
        "{page}"
    );
    browser
        .screenshot(&shots.join("01-not-signed-in.png"))
        .await;
    // Only configured admins get a link.
    let out = console_login(&b, "mallory");
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("no [[admin]] named"), "{out}");

    // Sign in (admin role) and see the inventory.
    let link = login_link(&b, SUPERVISOR);
    browser.goto(&link).await;
    browser.screenshot(&shots.join("02-sign-in.png")).await;
    browser.click("#signin-button").await;
    let inventory = browser.wait_for("id=\"inventory\"").await;
    for id in [IDENTITY, GUARDED] {
        assert!(inventory.contains(id), "{id} in the inventory: {inventory}");
    }
    browser.screenshot(&shots.join("03-inventory.png")).await;
    let login = b
        .records_of("console_login")
        .into_iter()
        .find(|r| r["decision"] == "allow")
        .expect("a console_login record");
    assert_eq!(login["actor"], format!("admin:{SUPERVISOR}"));
    assert!(
        !broker_tests::contains_bytes(
            &broker_tests::audit_bytes(&b.audit_dir()),
            link.rsplit('=').next().unwrap().as_bytes()
        ),
        "the ticket's secret is in no record"
    );
    // The link was for one use.
    let cookie = browser.cookie("broker_console").await;
    browser.clear_cookies().await;
    browser.goto(&link).await;
    browser.click("#signin-button").await;
    browser.wait_for("not valid").await;
    let refused = b.records_of("console_login");
    assert!(
        refused.iter().any(|r| r["decision"] == "deny"),
        "{refused:#?}"
    );
    sign_in(&browser, &b, SUPERVISOR).await;
    let _ = cookie;

    // A deny anomaly holds GUARDED; acknowledging it in the console lets tokens through.
    b.ask_ok(GUARDED_SUBJECT, SYNC_WRITE, Some("ledger:read"))
        .await;
    let held = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    assert_ne!(
        held.reply.status, 200,
        "held by the new_task anomaly: {}",
        held.reply.text
    );
    browser.goto(&format!("{base}/console/anomalies")).await;
    let page = browser.source().await;
    assert!(
        page.contains(GUARDED) && page.contains("new_task"),
        "{page}"
    );
    browser.screenshot(&shots.join("04-anomalies.png")).await;
    browser.click("button.ack").await;
    browser.wait_for("id=\"flash\"").await;
    let flash = browser.text("#flash").await;
    assert!(flash.contains("acknowledged"), "{flash}");
    browser
        .screenshot(&shots.join("05-anomaly-acknowledged.png"))
        .await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, None).await;
    let ack = b.records_of("anomaly_acknowledged");
    assert_eq!(ack.len(), 1, "{ack:#?}");
    assert_eq!(ack[0]["actor"], format!("admin:{SUPERVISOR}"));
    assert_eq!(ack[0]["evidence"]["kind"], "console_session");

    // A break-glass request by the commander, approved in the console by a second person.
    let r = b
        .request_grant(Some(&commander_bearer()), &ledger_grant_body("10m"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let grant = grant_id(&r.body);
    sign_in(&browser, &b, APPROVER).await;
    browser.goto(&format!("{base}/console/break-glass")).await;
    let page = browser.source().await;
    assert!(
        page.contains(&grant) && page.contains("0 of 1 approval"),
        "{page}"
    );
    browser
        .screenshot(&shots.join("06-break-glass-pending.png"))
        .await;
    browser
        .click(&format!("button.approve[data-grant=\"{grant}\"]"))
        .await;
    browser.wait_for("id=\"flash\"").await;
    let flash = browser.text("#flash").await;
    assert!(flash.contains("now active"), "{flash}");
    browser
        .screenshot(&shots.join("07-break-glass-approved.png"))
        .await;
    assert_eq!(b.report_of(&grant).await["status"], "active");
    let approved = b.records_of("break_glass_approved");
    assert_eq!(
        approved[0]["actor"],
        format!("admin:{APPROVER}"),
        "{approved:#?}"
    );

    // The approver holds neither revoke nor read_audit: the revocations page is refused.
    browser.goto(&format!("{base}/console/revocations")).await;
    let page = browser.source().await;
    assert!(page.contains("lacks the role"), "{page}");
    browser.screenshot(&shots.join("08-role-refused.png")).await;

    // Revoke a token from the form; it introspects inactive.
    let issued = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TASK))
        .await;
    let token = issued.access_token().expect("a token").to_owned();
    let jti = insecure_claims(&token)["jti"].as_str().unwrap().to_owned();
    sign_in(&browser, &b, SUPERVISOR).await;
    browser.goto(&format!("{base}/console/revocations")).await;
    browser.type_into("#revoke-jti", &jti).await;
    browser
        .type_into("#revoke-reason", "laptop lost (console test)")
        .await;
    browser.click("#revoke-button").await;
    browser.wait_for("id=\"flash\"").await;
    let flash = browser.text("#flash").await;
    assert!(flash.contains("revoked"), "{flash}");
    assert!(
        browser.source().await.contains(&jti),
        "the revocation is listed"
    );
    browser.screenshot(&shots.join("09-revoked.png")).await;
    let r = b.introspect_with(Some(&supervisor_bearer()), &token).await;
    assert_eq!(r.body["active"], false, "{}", r.text);
    let page = browser.source().await;
    assert!(!page.contains(&token), "no token is ever rendered");

    // The audit search finds the token's records; the chain verifies.
    browser.goto(&format!("{base}/console/audit")).await;
    browser.type_into("#q-jti", &jti).await;
    browser.click("#search-button").await;
    let page = browser.wait_for(&format!("value=\"{jti}\"")).await;
    assert!(page.contains("Chain verified"), "{page}");
    let events = browser.text("#records").await;
    assert!(
        events.contains("issued") && events.contains("revoked"),
        "{events}"
    );
    browser.screenshot(&shots.join("10-audit-search.png")).await;

    browser.goto(&format!("{base}/console/keys")).await;
    assert!(browser.text("#keys").await.contains("active"));
    browser.screenshot(&shots.join("11-signing-keys.png")).await;

    // A forged form (right cookie, no CSRF token) changes nothing.
    let session = browser.cookie("broker_console").await;
    let forged = broker_tests::http_client()
        .post(format!("{base}/console/revocations"))
        .header("cookie", format!("broker_console={session}"))
        .form(&[("jti", "forged-jti"), ("reason", "csrf")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let headers = forged.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        b.records_of("revoked")
            .iter()
            .all(|r| r["jti"] != "forged-jti"),
        "the forged revocation was not made"
    );

    // Sign out: the session is gone.
    browser.click(".signout button").await;
    browser.wait_for("signed out").await;
    browser.goto(&format!("{base}/console")).await;
    assert!(browser.source().await.contains("not signed in"));
    assert_eq!(b.records_of("console_logout").len(), 1);
}
