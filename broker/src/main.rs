//! The `broker` command: a thin CLI over the library.
//!
//! `serve` runs the service; `keygen`, `policy lint|explain`, `audit verify`, `token
//! decode` and `dev token` are operator tools. `anyhow` is used here only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod admin_cli;

/// mimalloc instead of glibc malloc: see BENCHMARKS.md, issue 13 item 3.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail};
use broker::clock::{Clock, SystemClock};
use broker::config::Config;
use broker::mint::keys::{self, Jwks, SigningAlgorithm};
use broker::policy::{self, Decision};
use broker::store::StateStore as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "Just-in-time token broker for workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Create or migrate the PostgreSQL schema of `[store]` (also done at start).
    Migrate {
        /// The config file (TOML) whose `[store]` names the database.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// The config file (TOML).
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Run on embedded defaults: creates keys, a dev workload issuer and sample
        /// policies under --dev-dir, serves plain HTTP on loopback.
        #[arg(long)]
        dev: bool,
        /// Where --dev keeps its state.
        #[arg(long, default_value = ".broker-dev")]
        dev_dir: PathBuf,
        /// Listen address for --dev.
        #[arg(long, default_value = "127.0.0.1:8080")]
        dev_addr: String,
        /// The algorithm --dev signs tokens with: ES256 (every relying party takes it)
        /// or EdDSA.
        #[arg(long, default_value = "ES256", value_parser = ["ES256", "EdDSA"])]
        dev_alg: String,
        /// Log format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Generate a signing key (PKCS#8 PEM, mode 0600) in DIR.
    Keygen {
        /// Key directory.
        #[arg(long)]
        dir: PathBuf,
        /// ES256 (default) or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
    },
    /// Registry and policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke tokens through the admin API (needs an admin with the `revoke` role).
    Revoke {
        /// One token id (a jti may start with `-`: base64url).
        #[arg(long, group = "selector", allow_hyphen_values = true)]
        jti: Option<String>,
        /// Every live token of an identity (with --task: of that identity's task).
        #[arg(long)]
        identity: Option<String>,
        /// Every live token of a task.
        #[arg(long, group = "selector")]
        task: Option<String>,
        /// Every live token of an owner's identities.
        #[arg(long, group = "selector")]
        owner: Option<String>,
        /// Every token of a break-glass grant.
        #[arg(long, group = "selector")]
        grant: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Signing keys: list, rotate, retire, revoke (through the admin API).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The kill switch: disable or enable an identity.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The NHI inventory (needs an admin with the `read_audit` role).
    Inventory {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only identities whose registration expires within this window, e.g. 30d.
        #[arg(long)]
        due: Option<String>,
        /// Also list tasks and scopes granted but unused within this window, e.g. 30d.
        #[arg(long)]
        unused: Option<String>,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Emergency break-glass access (through the broker's API).
    BreakGlass {
        #[command(subcommand)]
        command: BreakGlassCommand,
    },
    /// State store tools.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Helpers for `serve --dev`.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// The operator console at /console.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Prints a one-time login link for a configured admin (run on the broker's host: the
    /// ticket is written into the state directory; the link's secret is shown only here).
    Login {
        /// The broker's config file.
        #[arg(long)]
        config: PathBuf,
        /// The `[[admin]]` name to sign in as.
        #[arg(long)]
        admin: String,
        /// How long the link is valid (at most 1h).
        #[arg(long, default_value = "10m")]
        ttl: String,
        /// The broker's base URL as the browser reaches it (default: from `[listen] addr`).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory; prints every error and exits non-zero if any.
    Lint {
        /// The policy directory.
        dir: PathBuf,
        /// Broker config whose [[audience]] catalogue tasks are checked against.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Dry-run a request: print the decision and every rule passed or failed.
    Explain {
        /// Broker config (its policy directory and audience catalogue are used).
        #[arg(long)]
        config: PathBuf,
        /// The registry identity id (or give --issuer and --subject).
        #[arg(long)]
        identity: Option<String>,
        /// JWT issuer, to find the identity as the token path would.
        #[arg(long, requires = "subject")]
        issuer: Option<String>,
        /// JWT subject.
        #[arg(long, requires = "issuer")]
        subject: Option<String>,
        /// A claim of the workload JWT, `NAME=VALUE` (repeat for several), for identities
        /// whose `[[identity.match]]` requires exact claims (e.g. CI tokens).
        #[arg(long = "claim", value_name = "NAME=VALUE", requires = "issuer", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
        /// The task.
        #[arg(long)]
        task: String,
        /// Audience asked for.
        #[arg(long)]
        audience: Option<String>,
        /// Scopes asked for (space separated).
        #[arg(long)]
        scope: Option<String>,
        /// TTL asked for, seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Source address.
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
        /// Whether the request is certificate-bound (mTLS).
        #[arg(long)]
        cert_bound: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and the signed head anchor of an audit directory; with
    /// several (one per replica) and a `--config` on PostgreSQL, also every replica's
    /// log against the checkpoints in the database.
    Verify {
        /// The audit directory (or one per replica).
        #[arg(required = true, num_args = 1..)]
        path: Vec<PathBuf>,
        /// The broker's key directory (public keys are taken from it).
        #[arg(long, conflicts_with = "jwks")]
        key_dir: Option<PathBuf>,
        /// A JWKS file with the broker's public keys (e.g. saved from /.well-known/jwks.json).
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Broker config: its signing.key_dir (and signing.pkcs11's key) is used, and with
        /// `[store] kind = "postgres"` the keys every replica published and their audit
        /// checkpoints.
        #[arg(long, conflicts_with_all = ["key_dir", "jwks"])]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Decode a JWT (or a token response JSON) from stdin or an argument, WITHOUT verifying it.
    Decode {
        /// The token; read from stdin when absent.
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// No new tokens; every live token revoked.
    Disable {
        /// The identity id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Allow new tokens again (revoked ones stay revoked).
    Enable {
        /// The identity id.
        id: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every signing key and its state (needs `read_audit`).
    List {
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Prepare a successor for each signing algorithm; it signs after `prepublish`
    /// (needs `admin`).
    Rotate {
        /// Activate at once (verifiers refetch the JWKS on the new kid).
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Stop signing with KID now (a successor signs at once); it stays published until
    /// its last token has expired (needs `admin`).
    Retire {
        /// The key id (a kid may start with `-`: base64url).
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Emergency: remove KID from the JWKS at once and revoke every token it signed; a
    /// new key signs at once (needs `revoke`).
    Revoke {
        /// The key id (a kid may start with `-`: base64url).
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Generate a signing key in a PKCS#11 token (non-extractable; the broker never sees
    /// its private half) and print its kid; name it in `[signing] pkcs11` to sign with it.
    HsmGenerate {
        /// The PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.
        #[arg(long)]
        module: PathBuf,
        /// The token's label.
        #[arg(long)]
        token_label: Option<String>,
        /// The slot id (with --token-label as well, both must match).
        #[arg(long)]
        slot: Option<u64>,
        /// A file holding the user PIN.
        #[arg(long)]
        pin_file: PathBuf,
        /// The new key's label (`key_label`); a key with it already is an error.
        #[arg(long)]
        label: String,
        /// ES256 (default) or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
    },
}

#[derive(Subcommand)]
enum BreakGlassCommand {
    /// Request a grant (justification and ticket required).
    Request {
        /// Target identity.
        #[arg(long)]
        identity: String,
        /// Break-glass task.
        #[arg(long)]
        task: String,
        /// Duration, e.g. 30m.
        #[arg(long)]
        duration: String,
        /// Why.
        #[arg(long)]
        justification: String,
        /// Incident ticket.
        #[arg(long)]
        ticket: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Approve a grant (another person with the break_glass_approve role).
    Approve {
        /// Grant id.
        id: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// Close a grant now; its tokens are revoked.
    Close {
        /// Grant id.
        id: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
    /// The full account of a grant.
    Report {
        /// Grant id.
        id: String,
        #[command(flatten)]
        auth: admin_cli::AdminAuth,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print a workload JWT from the dev issuer (for `serve --dev`).
    Token {
        /// The dev state directory.
        #[arg(long, default_value = ".broker-dev")]
        dir: PathBuf,
        /// Subject of the workload JWT.
        #[arg(long, default_value = broker::dev::DEV_SUBJECT)]
        subject: String,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Everything that held a PKCS#11 key is dropped by now (the broker, its runtime and
    // the audit writer's thread): the modules are finalized before the process exits.
    broker::mint::pkcs11::finalize_unused();
    code
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            dev,
            dev_dir,
            dev_addr,
            dev_alg,
            log_format,
        } => {
            init_logs(&log_format);
            let config_path = if dev {
                let alg: SigningAlgorithm = dev_alg.parse()?;
                let path = broker::dev::prepare(&dev_dir, &dev_addr, alg)
                    .with_context(|| format!("preparing {}", dev_dir.display()))?;
                Some(path)
            } else {
                config
            };
            let Some(config_path) = config_path else {
                bail!("--config FILE or --dev is required");
            };
            let config = Config::load(&config_path)?;
            serve(config, dev.then_some(dev_dir))
        }
        Command::Keygen { dir, alg } => {
            let alg: SigningAlgorithm = alg.parse()?;
            let (path, kid) = keys::generate(&dir, alg, SystemClock.unix_secs())?;
            println!("generated {alg} key {kid} in {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => match command {
            PolicyCommand::Lint { dir, config } => lint(&dir, config.as_deref()),
            PolicyCommand::Explain {
                config,
                identity,
                issuer,
                subject,
                claims,
                task,
                audience,
                scope,
                ttl,
                source,
                cert_bound,
            } => explain(
                &config,
                &ExplainArgs {
                    identity,
                    issuer,
                    subject,
                    claims,
                    task,
                    audience,
                    scope,
                    ttl,
                    source,
                    cert_bound,
                },
            ),
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    path,
                    key_dir,
                    jwks,
                    config,
                },
        } => audit_verify(&path, key_dir, jwks, config),
        Command::Store {
            command: StoreCommand::Migrate { config },
        } => {
            let config = Config::load(&config)?;
            match &config.store {
                broker::config::StoreKind::File => {
                    println!("store.kind = \"file\": nothing to migrate");
                }
                broker::config::StoreKind::Postgres(opts) => {
                    let (before, now) = broker::store::postgres::migrate(opts)?;
                    if before == now {
                        println!("state database schema is current (version {now})");
                    } else {
                        println!("state database schema migrated from version {before} to {now}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command: TokenCommand::Decode { token },
        } => {
            let input = match token {
                Some(t) => t,
                None => std::io::read_to_string(std::io::stdin().lock())?,
            };
            println!("{}", broker::dev::decode_for_display(&input)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            jti,
            identity,
            task,
            owner,
            grant,
            reason,
            auth,
        } => {
            let body = serde_json::json!({
                "jti": jti, "identity": identity, "task": task, "owner": owner,
                "grant": grant, "reason": reason,
            });
            let body = serde_json::Value::Object(
                body.as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            );
            admin_cli::post(&auth, "/v1/admin/revocations", &body)
        }
        Command::Console {
            command:
                ConsoleCommand::Login {
                    config,
                    admin,
                    ttl,
                    url,
                },
        } => console_login(&config, &admin, &ttl, url.as_deref()),
        Command::Keys { command } => match command {
            KeysCommand::List { auth } => admin_cli::get(&auth, "/v1/admin/keys"),
            KeysCommand::Rotate { now, auth } => admin_cli::post(
                &auth,
                "/v1/admin/keys/rotate",
                &serde_json::json!({ "immediately": now }),
            ),
            KeysCommand::Retire { kid, auth } => admin_cli::post(
                &auth,
                &format!("/v1/admin/keys/{kid}/retire"),
                &serde_json::json!({}),
            ),
            KeysCommand::Revoke { kid, reason, auth } => admin_cli::post(
                &auth,
                &format!("/v1/admin/keys/{kid}/revoke"),
                &serde_json::json!({ "reason": reason }),
            ),
            KeysCommand::HsmGenerate {
                module,
                token_label,
                slot,
                pin_file,
                label,
                alg,
            } => {
                let alg: SigningAlgorithm = alg.parse()?;
                let config = broker::mint::pkcs11::Pkcs11Config {
                    module,
                    slot,
                    token_label,
                    pin_file,
                    key_label: label,
                };
                let signer = broker::mint::pkcs11::generate_in_token(&config, alg)?;
                println!(
                    "generated {alg} key {} in PKCS#11 token {:?} labelled {:?}",
                    keys::Signer::kid(&signer),
                    signer.token_label(),
                    config.key_label
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Identity { command } => match command {
            IdentityCommand::Disable { id, reason, auth } => admin_cli::post(
                &auth,
                &format!("/v1/admin/identities/{id}/disable"),
                &serde_json::json!({ "reason": reason }),
            ),
            IdentityCommand::Enable { id, auth } => admin_cli::post(
                &auth,
                &format!("/v1/admin/identities/{id}/enable"),
                &serde_json::json!({}),
            ),
        },
        Command::Inventory {
            json,
            due,
            unused,
            auth,
        } => {
            let mut q = Vec::new();
            if let Some(d) = due {
                q.push(format!("due={d}"));
            }
            if let Some(u) = unused {
                q.push(format!("unused={u}"));
            }
            let path = format!("/v1/admin/inventory?{}", q.join("&"));
            admin_cli::inventory(&auth, &path, json)
        }
        Command::BreakGlass { command } => match command {
            BreakGlassCommand::Request {
                identity,
                task,
                duration,
                justification,
                ticket,
                auth,
            } => admin_cli::post(
                &auth,
                "/v1/break-glass",
                &serde_json::json!({
                    "identity": identity, "task": task, "duration": duration,
                    "justification": justification, "ticket": ticket,
                }),
            ),
            BreakGlassCommand::Approve { id, auth } => admin_cli::post(
                &auth,
                &format!("/v1/break-glass/{id}/approve"),
                &serde_json::json!({}),
            ),
            BreakGlassCommand::Close { id, auth } => admin_cli::post(
                &auth,
                &format!("/v1/break-glass/{id}/close"),
                &serde_json::json!({}),
            ),
            BreakGlassCommand::Report { id, auth } => {
                admin_cli::get(&auth, &format!("/v1/break-glass/{id}/report"))
            }
        },
        Command::Dev {
            command: DevCommand::Token { dir, subject, ttl },
        } => {
            println!("{}", broker::dev::workload_token(&dir, &subject, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logs(format: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        // `trace_id` first on every line logged inside a traced request (broker::trace).
        builder
            .json()
            .event_format(broker::trace::TraceIdJson(
                tracing_subscriber::fmt::format().json(),
            ))
            .finish()
            .with(broker::trace::TraceIdLayer)
            .init();
    } else {
        builder.init();
    }
}

fn serve(config: Config, dev_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal();
        let broker = broker::start(&config).await?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // Tests and scripts wait for this line; it is printed once the broker can serve.
        println!("listening on {scheme}://{addr}");
        if let Some(dir) = dev_dir {
            println!("{}", broker::dev::banner(&dir, addr));
        }
        broker.serve(listener, shutdown).await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Registers SIGTERM/SIGINT handlers now (before the broker says it is listening), and
/// returns the future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (term, int);
            let t = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let i = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = t => {}
                _ = i => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

fn lint(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    // Tasks' audiences are checked against the config's [[audience]] catalogue, so a
    // config is needed: the one given, else a broker.toml beside the policy directory.
    let config = match config {
        Some(c) => c.to_path_buf(),
        None => {
            let beside = dir.parent().unwrap_or(Path::new(".")).join("broker.toml");
            if !beside.is_file() {
                bail!(
                    "give --config FILE: task audiences are checked against the broker config's [[audience]] catalogue (no {} found)",
                    beside.display()
                );
            }
            beside
        }
    };
    let config = Config::load(&config)?;
    let registry =
        policy::load_dir(dir, &config.audiences, &config.trust_domains()).and_then(|set| {
            let mut errors = policy::check_client_ca_names(&set, &config.client_ca_names());
            if let Some(max) = config.third_party_max_registration {
                errors.extend(policy::check_third_party_registration(
                    &set,
                    max,
                    SystemClock.now(),
                ));
            }
            if errors.is_empty() {
                Ok(set)
            } else {
                Err(errors)
            }
        });
    let break_glass = broker::breakglass::policy::load(dir, &config.audiences);
    match (registry, break_glass) {
        (Ok(set), Ok(bg)) => {
            println!(
                "ok: {} identities and {} break-glass policies in {}",
                set.len(),
                bg.policies.len(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        (registry, break_glass) => {
            let errors: Vec<policy::LintError> = registry
                .err()
                .into_iter()
                .flatten()
                .chain(break_glass.err().into_iter().flatten())
                .collect();
            for e in &errors {
                println!("{e}");
            }
            println!("{} error(s)", errors.len());
            Ok(ExitCode::from(1))
        }
    }
}

struct ExplainArgs {
    identity: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    claims: Vec<(String, String)>,
    task: String,
    audience: Option<String>,
    scope: Option<String>,
    ttl: Option<u64>,
    source: IpAddr,
    cert_bound: bool,
}

/// `--claim NAME=VALUE`.
fn parse_claim(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {arg:?}")),
    }
}

fn explain(config: &Path, a: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let set = policy::load_dir(
        &config.policy_dir,
        &config.audiences,
        &config.trust_domains(),
    )
    .map_err(|errs| {
        anyhow::anyhow!(
            "policy directory is invalid:\n{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let identity = match (&a.identity, &a.issuer, &a.subject) {
        (Some(id), _, _) => id.clone(),
        (None, Some(iss), Some(sub)) => {
            let claims: serde_json::Map<String, serde_json::Value> = a
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let shown = a
                .claims
                .iter()
                .map(|(k, v)| format!(" {k}={v}"))
                .collect::<String>();
            match set.match_jwt(iss, sub, &claims) {
                Some(i) => {
                    println!(
                        "caller issuer={iss} subject={sub}{shown} is identity {}",
                        i.id
                    );
                    i.id.clone()
                }
                None => {
                    println!(
                        "DENY  unknown_identity: no registered identity matches issuer {iss} subject {sub}{shown}"
                    );
                    return Ok(ExitCode::from(1));
                }
            }
        }
        _ => bail!("give --identity, or --issuer and --subject"),
    };
    let scopes: Option<Vec<&str>> = a.scope.as_deref().map(|s| s.split_whitespace().collect());
    let eval = set.explain(&policy::Request {
        identity: &identity,
        task: &a.task,
        audience: a.audience.as_deref(),
        scopes,
        requested_ttl: a.ttl.map(Duration::from_secs),
        source: a.source,
        now: SystemClock.now(),
        cert_bound: a.cert_bound,
    });
    for check in &eval.trace {
        println!(
            "{}  {:<22} {}",
            if check.passed { "pass" } else { "FAIL" },
            check.rule.as_str(),
            check.detail
        );
    }
    match eval.decision {
        Decision::Allow(g) => {
            println!(
                "ALLOW identity={} task={} aud={} scope=\"{}\" ttl={}s env={}",
                g.identity,
                g.task,
                g.audience,
                g.scopes.join(" "),
                g.ttl.as_secs(),
                g.environment
            );
            Ok(ExitCode::SUCCESS)
        }
        Decision::Deny(d) => {
            println!(
                "DENY  {} ({} {}): {}",
                d.rule.as_str(),
                d.rule.http_status(),
                d.rule.oauth_error(),
                d.reason
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn console_login(
    config: &std::path::Path,
    admin: &str,
    ttl: &str,
    url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    if !config.admins.iter().any(|a| a.name == admin) {
        let names: Vec<&str> = config.admins.iter().map(|a| a.name.as_str()).collect();
        eprintln!(
            "error: no [[admin]] named {admin:?} in the config (configured: {}); the console is for configured admins only",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
        return Ok(ExitCode::from(2));
    }
    let ttl = broker::config::parse_duration(ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?
        .as_secs();
    if ttl == 0 || ttl > broker::console::session::MAX_TICKET_TTL {
        bail!("--ttl must be between 1s and 1h");
    }
    let now = broker::clock::Clock::unix_secs(&broker::clock::SystemClock);
    let secret = broker::console::session::issue_ticket(&config.state_dir, admin, now + ttl)?;
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", config.addr)
        }
    };
    println!("{base}/console/login?ticket={secret}");
    eprintln!(
        "one-time link for admin {admin}, valid for {ttl}s; it signs in whoever opens it first"
    );
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(
    paths: &[PathBuf],
    key_dir: Option<PathBuf>,
    jwks: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut checkpoints = Vec::new();
    let keys: Jwks = if let Some(j) = jwks {
        serde_json::from_slice(
            &std::fs::read(&j).with_context(|| format!("reading {}", j.display()))?,
        )
        .with_context(|| format!("{} is not a JWKS", j.display()))?
    } else {
        let (dir, config) = match (key_dir, config) {
            (Some(d), _) => (d, None),
            (None, Some(c)) => {
                let config = Config::load(&c)?;
                (config.key_dir.clone(), Some(config))
            }
            (None, None) => bail!(
                "the head anchor is signed: give --key-dir DIR, --jwks FILE or --config FILE so its signature can be checked"
            ),
        };
        // The keys in the directory, and the public halves of those retired or revoked
        // since (anchors they signed still verify).
        let pkcs11 = config.as_ref().and_then(|c| c.pkcs11.as_ref());
        let mut keys = broker::mint::pkcs11::key_ring(&dir, pkcs11)?.jwks();
        for k in broker::mint::lifecycle::retired_public_keys(&dir).keys {
            if !keys.keys.iter().any(|x| x.kid == k.kid) {
                keys.keys.push(k);
            }
        }
        if let Some(broker::config::StoreKind::Postgres(opts)) = config.as_ref().map(|c| &c.store) {
            // Checkpoints first: the logs, read after, can only be longer.
            let store = broker::store::postgres::PostgresStore::connect(opts)?;
            checkpoints = store.checkpoints()?;
            for e in store.load()? {
                let jwk = match e.change {
                    broker::store::StateChange::KeyPublished { jwk, .. } => jwk,
                    broker::store::StateChange::Key(broker::store::KeyChange::Prepared {
                        jwk,
                        ..
                    }) => jwk,
                    _ => continue,
                };
                if !keys.keys.iter().any(|k| k.kid == jwk.kid) {
                    keys.keys.push(jwk);
                }
            }
        }
        keys
    };
    if paths.len() == 1 && checkpoints.is_empty() {
        return match broker::audit::verify(&paths[0], &keys) {
            Ok(report) => {
                println!(
                    "ok: {} records in {} segment(s), last seq {} hash {}",
                    report.records, report.segments, report.last_seq, report.last_hash
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("FAILED: {e}");
                Ok(ExitCode::from(1))
            }
        };
    }
    match broker::audit::verify_replicas(paths, &keys, &checkpoints) {
        Ok(reports) => {
            for r in &reports {
                println!(
                    "ok: {} (replica {}): {} records in {} segment(s), last seq {} hash {}; {} checkpoint(s) match",
                    r.dir.display(),
                    r.replica.as_deref().unwrap_or("unnamed"),
                    r.log.records,
                    r.log.segments,
                    r.log.last_seq,
                    r.log.last_hash,
                    r.checkpoints
                );
            }
            println!("ok: {} replica log(s) verified together", reports.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, KeysCommand};

    /// A base64url kid may start with `-`; the CLI takes it as the KID, not an option.
    #[test]
    fn a_kid_starting_with_a_hyphen_is_a_kid() {
        for sub in ["revoke", "retire"] {
            let mut args = vec!["broker", "keys", sub, "-dRShQGejIHa5Gzl1t"];
            if sub == "revoke" {
                args.extend(["--reason", "leak"]);
            }
            args.extend(["--url", "http://127.0.0.1:8080"]);
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{sub}: {e}"));
            let Command::Keys { command } = cli.command else {
                panic!("not keys");
            };
            let kid = match command {
                KeysCommand::Revoke { kid, .. } | KeysCommand::Retire { kid, .. } => kid,
                _ => panic!("{sub}"),
            };
            assert_eq!(kid, "-dRShQGejIHa5Gzl1t");
        }
    }

    /// A base64url jti starts with `-` once in 64 tokens; `revoke --jti` takes it as the
    /// value (CI once failed on `-i…`).
    #[test]
    fn a_jti_starting_with_a_hyphen_is_a_jti() {
        for jti in ["-iQx3v0Zb2kYwJ8aPq1LmNA", "--8Zb2kYwJ8aPq1LmNAiQx3"] {
            let args = [
                "broker",
                "revoke",
                "--jti",
                jti,
                "--reason",
                "leak",
                "--url",
                "http://127.0.0.1:8080",
            ];
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{jti}: {e}"));
            let Command::Revoke { jti: got, .. } = cli.command else {
                panic!("not revoke");
            };
            assert_eq!(got.as_deref(), Some(jti));
        }
    }
}
