//! A workload that calls a resource server with broker tokens, through the SDK.
//!
//! A [`TokenSource`] exchanges the workload JWT in `--jwt-file` (re-read on every fetch,
//! like a Kubernetes projected token) for an access token of `--task`, keeps it in cache
//! and renews it in the background; an [`AuthorizedClient`] puts it on every request and,
//! on a 401, refreshes once and retries once. Every `--every` it calls `--resource` and
//! prints the status and the token's time to expiry; it never prints a token.
//!
//! Against `broker serve --dev` and the `resource_server` example:
//!
//! ```text
//! broker dev token --dir .broker-dev > .broker-dev/workload.jwt
//! cargo run -p broker-examples --bin workload
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use broker_client::{AuthorizedClient, Credential, TokenSource};
use broker_examples::parse_duration;
use clap::Parser;

/// Call a resource server every interval with a broker token for one task.
#[derive(Parser, Debug)]
#[command(name = "workload", version)]
struct Args {
    /// Broker base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    broker: String,
    /// The task of the workload's policy.
    #[arg(long, default_value = "demo")]
    task: String,
    /// The workload JWT file (re-read on every token fetch).
    #[arg(long, default_value = ".broker-dev/workload.jwt")]
    jwt_file: PathBuf,
    /// CA bundle (PEM) of an HTTPS broker.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Narrow the scopes (repeatable; default: the task's scopes).
    #[arg(long)]
    scope: Vec<String>,
    /// Ask for a shorter token lifetime, seconds.
    #[arg(long)]
    ttl: Option<u64>,
    /// The URL to call.
    #[arg(long, default_value = "http://127.0.0.1:8081/hello")]
    resource: String,
    /// Time between calls.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    every: Duration,
    /// Stop after this many calls (0: until Ctrl-C); the exit code is 0 only if every
    /// call got a 2xx.
    #[arg(long, default_value_t = 0)]
    count: u64,
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut builder = TokenSource::builder(&args.broker, &args.task)
        .credential(Credential::jwt_file(&args.jwt_file));
    if let Some(ca) = &args.ca_file {
        builder = builder.ca_file(ca);
    }
    for s in &args.scope {
        builder = builder.scope(s);
    }
    if let Some(ttl) = args.ttl {
        builder = builder.ttl(ttl);
    }
    let source = builder.build().context("building the token source")?;

    // reqwest is built without a TLS provider of its own: use aws-lc-rs, like the SDK.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let client = AuthorizedClient::new(http, source.clone());

    let mut all_ok = true;
    let mut tick = tokio::time::interval(args.every);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        let req = client.client().get(&args.resource).build()?;
        match client.execute(req).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let ttl = match source.token().await {
                    Ok(t) => format!("{}s", t.expires_at().saturating_sub(now_secs())),
                    Err(_) => "-".to_owned(),
                };
                println!(
                    "call {n}: {status} {:?} (token expires in {ttl}; broker requests {})",
                    body.trim(),
                    source.broker_requests()
                );
                all_ok &= status.is_success();
            }
            Err(e) => {
                // Typed errors say what to do: denied by policy (fix the registry or the
                // task), broker unavailable (retried), credential unreadable, expired.
                println!("call {n}: failed: {e}");
                all_ok = false;
            }
        }
        if args.count != 0 && n >= args.count {
            break;
        }
    }
    Ok(all_ok)
}

fn now_secs() -> u64 {
    #[allow(clippy::disallowed_methods)] // an example process: wall time is right here
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}
