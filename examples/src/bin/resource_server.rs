//! A resource server that accepts only broker tokens, verified offline with the SDK.
//!
//! `GET /hello` needs a valid access token for `--audience` carrying every
//! `--require-scope`; the [`Authenticated`] extractor answers 401 (with
//! `WWW-Authenticate: Bearer realm=..., error="invalid_token"`) or 403
//! (`insufficient_scope`) otherwise. For each accepted call it prints the caller's `sub`,
//! task and scopes; it never prints a token.
//!
//! Against `broker serve --dev` (broker on `http://127.0.0.1:8080`):
//!
//! ```text
//! cargo run -p broker-examples --bin resource_server
//! ```
//!
//! With `--feed-jwt-file` (the workload JWT of an identity with `may_introspect = true`)
//! it also polls the broker's revocation feed, so revoked tokens are refused too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use broker_client::axum_extract::Authenticated;
use broker_client::{Credential, Verifier};
use broker_examples::parse_duration;
use clap::Parser;

/// Serve GET /hello to callers with a valid broker token.
#[derive(Parser, Debug)]
#[command(name = "resource_server", version)]
struct Args {
    /// Broker base URL (its JWKS and revocation feed are read from here).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    broker: String,
    /// The broker's `issuer` (the `iss` of its tokens); default: --broker.
    #[arg(long)]
    issuer: Option<String>,
    /// This server's audience: tokens for any other audience are refused.
    #[arg(long, default_value = "https://api.dev.example.org")]
    audience: String,
    /// A scope every caller must have (repeatable).
    #[arg(long = "require-scope", default_value = "demo:read")]
    require_scope: Vec<String>,
    /// Listen address (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// CA bundle (PEM) of an HTTPS broker.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Workload JWT file of an identity with `may_introspect = true`: poll the revocation
    /// feed with it.
    #[arg(long)]
    feed_jwt_file: Option<PathBuf>,
    /// How often to poll the revocation feed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    feed_every: Duration,
}

async fn hello(Authenticated(claims): Authenticated) -> String {
    println!(
        "accepted: sub={} task={} scope={:?} jti={}",
        claims.sub, claims.task, claims.scope, claims.jti
    );
    format!("hello {}\n", claims.sub)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = Verifier::builder(&args.broker, &args.audience);
    if let Some(iss) = &args.issuer {
        builder = builder.issuer(iss);
    }
    if let Some(ca) = &args.ca_file {
        builder = builder.ca_file(ca);
    }
    for s in &args.require_scope {
        builder = builder.require_scope(s);
    }
    if let Some(jwt) = &args.feed_jwt_file {
        builder = builder.revocation_feed(Credential::jwt_file(jwt), args.feed_every);
    }
    let verifier = builder.build().context("building the verifier")?;
    // Fail loudly now rather than on the first call if the broker's keys are unreachable;
    // the verifier refetches them later on an unknown `kid` anyway.
    if let Err(e) = verifier.refetch_keys(true).await {
        eprintln!("warning: could not fetch the broker's keys yet: {e}");
    }

    let app = Router::new()
        .route("/hello", get(hello))
        .with_state(verifier);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "listening on http://{addr} (audience {}, scopes {:?})",
        args.audience, args.require_scope
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resource_server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
