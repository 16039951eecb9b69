//! The real `curl` binary as the mTLS client: `--cacert` (the server's CA), `--cert` /
//! `--key` (the workload's certificate), a form body, and `-w '%{http_code}'`.
//!
//! A refused TLS handshake shows as a non-zero exit code (35 `SSL connect error`, or 56
//! `Failure when receiving data` when TLS 1.3 reports the server's alert after the client
//! has already finished) with HTTP code `000`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::pki::Leaf;

/// A `curl` invocation being built.
#[derive(Debug, Clone)]
pub struct Curl {
    url: String,
    cacert: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    form: Vec<(String, String)>,
}

impl Curl {
    /// A request to `url` (a GET unless form parameters are added, then a POST).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cacert: None,
            client: None,
            form: Vec::new(),
        }
    }

    /// Trusts `ca` (and only it) for the server certificate (`--cacert`).
    pub fn cacert(mut self, ca: &Path) -> Self {
        self.cacert = Some(ca.to_path_buf());
        self
    }

    /// Presents `leaf` as the client certificate (`--cert`, `--key`).
    pub fn client_cert(mut self, leaf: &Leaf) -> Self {
        self.client = Some((leaf.cert.clone(), leaf.key.clone()));
        self
    }

    /// Presents no client certificate.
    pub fn no_client_cert(mut self) -> Self {
        self.client = None;
        self
    }

    /// Adds a form parameter (`--data-urlencode key=value`; makes it a POST).
    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.form.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds every parameter of a form.
    pub fn form(mut self, params: &[(String, String)]) -> Self {
        self.form.extend(params.iter().cloned());
        self
    }

    /// The command line, for failure messages.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some((cert, key)) = &self.client {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        for (k, v) in &self.form {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        cmd.arg(&self.url).stdin(Stdio::null());
        cmd
    }

    /// Runs curl and collects what it saw.
    pub fn run(&self) -> CurlReply {
        let mut cmd = self.command();
        let out = cmd.output().expect("running curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (text, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        let status = code.trim().parse::<u16>().unwrap_or(0);
        CurlReply {
            exit: out.status.code(),
            status,
            body: serde_json::from_str(text).unwrap_or(Value::Null),
            text: text.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command: format!("{cmd:?}"),
        }
    }
}

/// What curl reported.
#[derive(Debug, Clone)]
pub struct CurlReply {
    /// curl's exit code (0 when it got an HTTP answer, whatever its status).
    pub exit: Option<i32>,
    /// `%{http_code}` (0 when there was no HTTP answer).
    pub status: u16,
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub body: Value,
    /// The raw body.
    pub text: String,
    /// curl's stderr (its error message).
    pub stderr: String,
    /// The command line that ran.
    pub command: String,
}

impl CurlReply {
    /// The OAuth `error` code, if any.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    /// The `access_token`, if any.
    pub fn access_token(&self) -> Option<&str> {
        self.body.get("access_token").and_then(Value::as_str)
    }

    /// Whether the connection failed before any HTTP answer (a refused TLS handshake).
    pub fn no_http_answer(&self) -> bool {
        self.exit != Some(0) && self.status == 0
    }
}

impl std::fmt::Display for CurlReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n  exit {:?}, http {}\n  body: {}\n  stderr: {}",
            self.command,
            self.exit,
            self.status,
            self.text,
            self.stderr.trim()
        )
    }
}
