//! A throwaway X.509 PKI made at test time by the `openssl` command-line tool, never by
//! project code, so that the broker's certificate handling is checked against certificates
//! it had no hand in.
//!
//! - [`Pki`] owns a temp dir; [`Pki::ca`] makes a self-signed CA (EC P-256,
//!   `basicConstraints = critical, CA:TRUE`, `keyUsage = keyCertSign, cRLSign`) with its own
//!   `openssl ca` database.
//! - [`Ca::issue`] signs a leaf from a [`LeafSpec`] with `openssl ca`: subject CN, URI /
//!   DNS / IP SANs, the extended key usage, and an explicit validity window
//!   (`-startdate`/`-enddate`, which is how expired and not-yet-valid certificates are made
//!   without faking the clock: OpenSSL 3.0's `x509 -req` has no `-not_before`).
//! - [`Leaf::x5t_s256`] and [`Leaf::sha256_hex`] compute the RFC 8705 thumbprint and the
//!   hex fingerprint with `openssl x509 -outform der | openssl dgst` / `sha256sum`.
//! - [`tools_present`] is the gate every test that needs `openssl` or `curl` starts with:
//!   outside CI a missing tool skips the test with a note; under `CI=true` it fails it.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::{CmdOutput, now_secs};

// ---------------------------------------------------------------------------------------
// The tool gate
// ---------------------------------------------------------------------------------------

/// Whether this run is CI (`CI=true`, as GitHub Actions and most CI systems set it).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether `program` runs (`openssl version`, `curl --version`, `<p> --version`).
pub fn tool_runs(program: &str) -> bool {
    let arg = if program == "openssl" {
        "version"
    } else {
        "--version"
    };
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The decision of [`tools_present`], separated for testing: `Ok(true)` run the test,
/// `Ok(false)` skip it, `Err(why)` fail it.
pub fn tool_gate(missing: &[&str], ci: bool) -> Result<bool, String> {
    if missing.is_empty() {
        return Ok(true);
    }
    let list = missing.join(", ");
    if ci {
        Err(format!(
            "CI=true and the test needs {list}, which is not installed or does not run: \
             install it (CI must not skip these tests)"
        ))
    } else {
        Ok(false)
    }
}

/// Gate for tests that shell out to `tools`: `true` when all run. When one is missing,
/// under `CI=true` this panics (the test fails); otherwise it prints a note on the real
/// stderr (past the test harness's capture) and returns `false` (the test skips).
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !tool_runs(t)).collect();
    match tool_gate(&missing, is_ci()) {
        Ok(true) => true,
        Ok(false) => {
            let _ = writeln!(
                std::io::stderr(),
                "note: skipping {test}: it needs {} (not found); under CI=true this fails",
                missing.join(", ")
            );
            false
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

// ---------------------------------------------------------------------------------------
// Running openssl
// ---------------------------------------------------------------------------------------

/// Runs `openssl ARGS` and panics with its output unless it exits 0.
pub fn openssl<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("openssl");
    cmd.args(args).stdin(Stdio::null());
    let shown = format!("{cmd:?}");
    let out = CmdOutput::of(&mut cmd);
    assert!(out.success(), "{shown} failed: {out}");
    out
}

/// Runs a `sh -c SCRIPT sh ARGS...` pipeline and returns its trimmed stdout; panics
/// unless it exits 0 with some output. `set -o pipefail` is not POSIX, so the callers'
/// scripts check their own output shape.
pub fn sh(script: &str, args: &[&OsStr]) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh").args(args);
    cmd.stdin(Stdio::null());
    let out = CmdOutput::of(&mut cmd);
    assert!(
        out.success() && !out.stdout.trim().is_empty(),
        "sh -c {script:?} failed: {out}"
    );
    out.stdout.trim().to_owned()
}

/// `unix` seconds as an ASN.1 GeneralizedTime string `YYYYMMDDHHMMSSZ` (UTC), the form
/// `openssl ca -startdate/-enddate` take.
pub fn asn1_time(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------------------------
// The PKI
// ---------------------------------------------------------------------------------------

/// One day, seconds.
pub const DAY: u64 = 86_400;

/// A temp dir of CAs and leaves, all made by `openssl`.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// An empty PKI in a fresh temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("broker-e2e-pki-")
            .tempdir()
            .expect("creating the PKI temp dir");
        Self { dir }
    }

    /// The PKI's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new self-signed CA named `name` (its files live in `<pki>/<name>/`) with subject
    /// `CN=cn`, valid from a day ago for 30 days.
    pub fn ca(&self, name: &str, cn: &str) -> Ca {
        Ca::create(&self.dir.path().join(name), name, cn)
    }
}

/// A certificate authority: `ca.pem` (certificate), `ca.key` (EC P-256 private key) and
/// the `openssl ca` config and database that sign its leaves.
#[derive(Debug, Clone)]
pub struct Ca {
    /// The name given at creation (also the directory name).
    pub name: String,
    /// The CA's directory.
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA private key (PEM, PKCS#8).
    pub key: PathBuf,
    cnf: PathBuf,
}

/// The `openssl` config of a CA: `req` for its own CSR and the leaves' CSRs, `ca` for
/// signing with an explicit window. Absolute paths only (no `$dir` expansion surprises).
fn ca_config(dir: &Path, cn: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"# openssl config of a test CA (made by the e2e harness)
[ req ]
distinguished_name = dn
prompt             = no

[ dn ]
CN = {cn}

[ v3_ca ]
basicConstraints     = critical, CA:TRUE
keyUsage             = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ ca ]
default_ca = this_ca

[ this_ca ]
database        = {db}
new_certs_dir   = {issued}
serial          = {serial}
certificate     = {cert}
private_key     = {key}
default_md      = sha256
policy          = policy_any
unique_subject  = no
email_in_dn     = no
copy_extensions = none

[ policy_any ]
commonName = supplied
"#,
        db = p("index.txt"),
        issued = p("issued"),
        serial = p("serial"),
        cert = p("ca.pem"),
        key = p("ca.key"),
    )
}

/// `openssl genpkey` an EC P-256 key into `path`.
fn gen_key(path: &Path) {
    openssl([
        OsStr::new("genpkey"),
        OsStr::new("-algorithm"),
        OsStr::new("EC"),
        OsStr::new("-pkeyopt"),
        OsStr::new("ec_paramgen_curve:P-256"),
        OsStr::new("-out"),
        path.as_os_str(),
    ]);
}

impl Ca {
    fn create(dir: &Path, name: &str, cn: &str) -> Self {
        std::fs::create_dir_all(dir.join("issued")).expect("creating the CA dir");
        std::fs::write(dir.join("index.txt"), "").expect("CA database");
        // Distinct serial ranges per CA make "a different serial" visible in rotations.
        let serial = 0x1000 + u64::from(name.bytes().fold(0u8, |a, b| a.wrapping_add(b))) * 0x100;
        std::fs::write(dir.join("serial"), format!("{serial:X}\n")).expect("CA serial");
        let cnf = dir.join("ca.cnf");
        std::fs::write(&cnf, ca_config(dir, cn)).expect("CA config");
        let ca = Self {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            cnf,
        };
        gen_key(&ca.key);
        let csr = dir.join("ca.csr");
        openssl([
            OsStr::new("req"),
            OsStr::new("-new"),
            OsStr::new("-config"),
            ca.cnf.as_os_str(),
            OsStr::new("-key"),
            ca.key.as_os_str(),
            OsStr::new("-out"),
            csr.as_os_str(),
        ]);
        let now = now_secs();
        let (start, end) = (asn1_time(now - DAY), asn1_time(now + 30 * DAY));
        openssl([
            OsStr::new("ca"),
            OsStr::new("-batch"),
            OsStr::new("-selfsign"),
            OsStr::new("-notext"),
            OsStr::new("-config"),
            ca.cnf.as_os_str(),
            OsStr::new("-keyfile"),
            ca.key.as_os_str(),
            OsStr::new("-in"),
            csr.as_os_str(),
            OsStr::new("-out"),
            ca.cert.as_os_str(),
            OsStr::new("-startdate"),
            OsStr::new(&start),
            OsStr::new("-enddate"),
            OsStr::new(&end),
            OsStr::new("-extfile"),
            ca.cnf.as_os_str(),
            OsStr::new("-extensions"),
            OsStr::new("v3_ca"),
        ]);
        ca
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("reading the CA certificate")
    }

    /// Signs a leaf for `spec` with `openssl ca`; its files are
    /// `<ca dir>/<spec.name>.{pem,key}`.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let base = self.dir.join(&spec.name);
        let with = |ext: &str| base.with_extension(ext);
        let (cert, key, csr, extfile) = (with("pem"), with("key"), with("csr"), with("ext"));
        gen_key(&key);
        openssl([
            OsStr::new("req"),
            OsStr::new("-new"),
            OsStr::new("-config"),
            self.cnf.as_os_str(),
            OsStr::new("-key"),
            key.as_os_str(),
            OsStr::new("-subj"),
            OsStr::new(&format!("/CN={}", spec.cn)),
            OsStr::new("-out"),
            csr.as_os_str(),
        ]);
        std::fs::write(&extfile, spec.extensions()).expect("writing the extension file");
        openssl([
            OsStr::new("ca"),
            OsStr::new("-batch"),
            OsStr::new("-notext"),
            OsStr::new("-config"),
            self.cnf.as_os_str(),
            OsStr::new("-in"),
            csr.as_os_str(),
            OsStr::new("-out"),
            cert.as_os_str(),
            OsStr::new("-startdate"),
            OsStr::new(&asn1_time(spec.not_before)),
            OsStr::new("-enddate"),
            OsStr::new(&asn1_time(spec.not_after)),
            OsStr::new("-extfile"),
            extfile.as_os_str(),
            OsStr::new("-extensions"),
            OsStr::new("leaf"),
        ]);
        Leaf {
            name: spec.name.clone(),
            cert,
            key,
        }
    }
}

/// What a leaf certificate says. Build with [`LeafSpec::client`] or [`LeafSpec::server`]
/// and the builder methods.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// File stem of the leaf's files in the CA dir.
    pub name: String,
    /// Subject common name.
    pub cn: String,
    /// URI SANs (SPIFFE IDs).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<String>,
    /// `extendedKeyUsage` value (`clientAuth`, `serverAuth`, ...); `None`: no EKU.
    pub eku: Option<String>,
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds.
    pub not_after: u64,
}

impl LeafSpec {
    /// A client certificate: `CN=cn`, EKU `clientAuth`, valid from an hour ago for a day.
    pub fn client(name: &str, cn: &str) -> Self {
        let now = now_secs();
        Self {
            name: name.to_owned(),
            cn: cn.to_owned(),
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            eku: Some("clientAuth".to_owned()),
            not_before: now - 3600,
            not_after: now + DAY,
        }
    }

    /// A server certificate for the loopback listener: `CN=cn`, SANs `IP:127.0.0.1` and
    /// `DNS:localhost`, EKU `serverAuth`, valid from an hour ago for a day.
    pub fn server(name: &str, cn: &str) -> Self {
        Self {
            eku: Some("serverAuth".to_owned()),
            ..Self::client(name, cn)
        }
        .ip("127.0.0.1")
        .dns("localhost")
    }

    /// Adds a URI SAN.
    pub fn uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// Adds a DNS SAN.
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    /// Adds an IP SAN.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ips.push(ip.to_owned());
        self
    }

    /// Sets the extended key usage (`None`: no EKU extension).
    pub fn eku(mut self, eku: Option<&str>) -> Self {
        self.eku = eku.map(str::to_owned);
        self
    }

    /// Sets the validity window (Unix seconds).
    pub fn valid(mut self, not_before: u64, not_after: u64) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// The `openssl` extension section `[ leaf ]` for this spec.
    fn extensions(&self) -> String {
        let mut s = String::from(
            "[ leaf ]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
        );
        if let Some(eku) = &self.eku {
            s.push_str(&format!("extendedKeyUsage = {eku}\n"));
        }
        let mut alt = String::new();
        for (i, u) in self.uris.iter().enumerate() {
            alt.push_str(&format!("URI.{} = {u}\n", i + 1));
        }
        for (i, d) in self.dns.iter().enumerate() {
            alt.push_str(&format!("DNS.{} = {d}\n", i + 1));
        }
        for (i, ip) in self.ips.iter().enumerate() {
            alt.push_str(&format!("IP.{} = {ip}\n", i + 1));
        }
        if !alt.is_empty() {
            s.push_str("subjectAltName = @alt\n\n[ alt ]\n");
            s.push_str(&alt);
        }
        s
    }
}

/// A signed leaf: certificate and private key, PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The spec's name.
    pub name: String,
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl Leaf {
    /// RFC 8705 `x5t#S256`: base64url (no padding) of the SHA-256 of the DER certificate,
    /// computed by `openssl x509 -outform der | openssl dgst -sha256 -binary | openssl
    /// base64 -A | tr`.
    pub fn x5t_s256(&self) -> String {
        let t = sh(
            r#"openssl x509 -in "$1" -outform der | openssl dgst -sha256 -binary | openssl base64 -A | tr '+/' '-_' | tr -d '='"#,
            &[self.cert.as_os_str()],
        );
        assert_eq!(t.len(), 43, "a base64url SHA-256 has 43 characters: {t}");
        t
    }

    /// Lower-case hex SHA-256 of the DER certificate: `openssl x509 -outform der |
    /// sha256sum`.
    pub fn sha256_hex(&self) -> String {
        let out = sh(
            r#"openssl x509 -in "$1" -outform der | sha256sum"#,
            &[self.cert.as_os_str()],
        );
        let hex = out.split_whitespace().next().unwrap_or_default().to_owned();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "sha256sum output: {out}"
        );
        hex
    }

    /// `openssl x509 -noout -subject -serial -issuer` of the certificate.
    pub fn describe(&self) -> String {
        openssl([
            OsStr::new("x509"),
            OsStr::new("-in"),
            self.cert.as_os_str(),
            OsStr::new("-noout"),
            OsStr::new("-subject"),
            OsStr::new("-serial"),
            OsStr::new("-issuer"),
        ])
        .stdout
    }

    /// The private key PEM (to prove it never reaches a log).
    pub fn key_pem(&self) -> String {
        std::fs::read_to_string(&self.key).expect("reading the leaf key")
    }
}

/// What `openssl s_client` sees at `127.0.0.1:port`: the server certificate's
/// `subject`/`serial`/`issuer` lines, and whether its chain verified against `ca_file`
/// (`Verify return code: 0 (ok)`). No client certificate is sent.
pub fn server_certificate(port: u16, ca_file: &Path) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-CAfile"])
        .arg(ca_file)
        .stdin(Stdio::null());
    let out = CmdOutput::of(&mut cmd);
    let verified = out.stdout.contains("Verify return code: 0 (ok)");
    let begin = out.stdout.find("-----BEGIN CERTIFICATE-----");
    let end = out.stdout.find("-----END CERTIFICATE-----");
    let (Some(b), Some(e)) = (begin, end) else {
        return (String::new(), false);
    };
    let pem = &out.stdout[b..e + "-----END CERTIFICATE-----".len()];
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-serial", "-issuer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning openssl x509");
    x.stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("writing to openssl x509");
    let o = x.wait_with_output().expect("openssl x509");
    (String::from_utf8_lossy(&o.stdout).into_owned(), verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_time_is_utc_generalized_time() {
        assert_eq!(asn1_time(0), "19700101000000Z");
        assert_eq!(asn1_time(951_782_400), "20000229000000Z");
        assert_eq!(asn1_time(1_735_689_599), "20241231235959Z");
        assert_eq!(asn1_time(4_102_444_800), "21000101000000Z");
    }

    #[test]
    fn tool_gate_skips_outside_ci_and_fails_in_ci() {
        assert_eq!(tool_gate(&[], false), Ok(true));
        assert_eq!(tool_gate(&[], true), Ok(true));
        assert_eq!(tool_gate(&["curl"], false), Ok(false));
        let err = tool_gate(&["openssl", "curl"], true).unwrap_err();
        assert!(
            err.contains("openssl, curl") && err.contains("CI=true"),
            "{err}"
        );
    }

    #[test]
    fn leaf_extensions_name_every_san() {
        let s = LeafSpec::client("c", "x")
            .uri("spiffe://a/b")
            .uri("spiffe://a/c")
            .dns("h.example.org")
            .extensions();
        assert!(
            s.contains("URI.1 = spiffe://a/b\nURI.2 = spiffe://a/c\n"),
            "{s}"
        );
        assert!(s.contains("DNS.1 = h.example.org"), "{s}");
        assert!(s.contains("extendedKeyUsage = clientAuth"), "{s}");
        let s = LeafSpec::client("c", "x").eku(None).extensions();
        assert!(
            !s.contains("subjectAltName") && !s.contains("extendedKeyUsage"),
            "{s}"
        );
        let s = LeafSpec::server("s", "x").extensions();
        assert!(
            s.contains("IP.1 = 127.0.0.1") && s.contains("DNS.1 = localhost"),
            "{s}"
        );
    }
}
