//! `broker revoke` and `broker identity disable|enable`: thin clients of the admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How the CLI authenticates to the broker.
#[derive(Args, Debug)]
pub(crate) struct AdminAuth {
    /// Broker base URL, e.g. https://broker.example.org:8443.
    #[arg(long)]
    pub(crate) url: String,
    /// CA bundle that signed the broker's server certificate.
    #[arg(long)]
    pub(crate) cacert: Option<PathBuf>,
    /// Admin client certificate (PEM) for mTLS.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Admin client key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// File holding an admin JWT from a trusted issuer (sent as a Bearer credential).
    #[arg(long, conflicts_with = "cert")]
    pub(crate) bearer_file: Option<PathBuf>,
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

fn client(auth: &AdminAuth) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &auth.cacert {
        for c in certs(ca)? {
            roots.add(c).context("adding the CA certificate")?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let tls = match (&auth.cert, &auth.key) {
        (Some(c), Some(k)) => {
            let key = PrivateKeyDer::from_pem_file(k)
                .with_context(|| format!("reading {}", k.display()))?;
            builder.with_client_auth_cert(certs(c)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(15))
        .build()?)
}

/// POSTs `body` to `path` and prints the answer; non-2xx exits 1.
pub(crate) fn post(
    auth: &AdminAuth,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<ExitCode> {
    call(auth, path, Some(body))
}

/// GETs `path` and prints the answer; non-2xx exits 1.
pub(crate) fn get(auth: &AdminAuth, path: &str) -> anyhow::Result<ExitCode> {
    call(auth, path, None)
}

fn call(
    auth: &AdminAuth,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let client = client(auth)?;
    let url = format!("{}{path}", auth.url.trim_end_matches('/'));
    let bearer = match &auth.bearer_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    if auth.cert.is_none() && bearer.is_none() {
        bail!("authenticate with --cert/--key (mTLS) or --bearer-file");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut req = match body {
            Some(b) => client.post(&url).json(b),
            None => client.get(&url),
        };
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        println!("{text}");
        Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            eprintln!("broker answered {status}");
            ExitCode::from(1)
        })
    })
}

/// Fetches the inventory and prints it as JSON or as a table.
pub(crate) fn inventory(auth: &AdminAuth, path: &str, json: bool) -> anyhow::Result<ExitCode> {
    let client = client(auth)?;
    let url = format!("{}{path}", auth.url.trim_end_matches('/'));
    let bearer = match &auth.bearer_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(async move {
        let mut req = client.get(&url);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        anyhow::Ok((status, resp.text().await.unwrap_or_default()))
    })?;
    if !status.is_success() || json {
        println!("{body}");
        return Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!(
        "ID                       OWNER            ENV    STATUS     EXPIRES     TOKENS24H  UNUSED"
    );
    for i in v["identities"].as_array().into_iter().flatten() {
        let s = |k: &str| i[k].as_str().unwrap_or("").to_owned();
        let unused: Vec<String> = i["unused_scopes"]
            .as_array()
            .or(i["tasks_never_used"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        println!(
            "{:<24} {:<16} {:<6} {:<10} {:<11} {:>9}  {}",
            s("id"),
            s("owner"),
            s("environment"),
            s("status"),
            s("expires"),
            i["tokens_24h"].as_u64().unwrap_or(0),
            unused.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}
