//! A throw-away PostgreSQL server for tests, from the system's binaries (Debian package
//! `postgresql`): `initdb` into a temp dir, `pg_ctl start` on a free loopback port and a
//! private socket directory, stopped when dropped. Run as the `postgres` user when the
//! tests run as root (the server refuses to run as root).
//!
//! Without PostgreSQL installed the tests that need it are skipped with a message, except
//! under `CI=true`, where they fail. Each test starts its own server and uses its
//! `postgres` database, so no test sees another's state.
//!
//! The broker's own unit tests include this file too (`store::postgres` tests), so that
//! there is one way to start PostgreSQL in the workspace.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// A running test server.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some(v) = versions.pop() {
        return Some(v);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

/// The `postgres` user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl TestPostgres {
    /// Starts a server, or `None` (skip) when PostgreSQL is not installed outside CI.
    pub fn start() -> Option<Self> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed (initdb not found): .ci/run installs the Debian package postgresql"
            );
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().ok()?;
        let root = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
        let owner = if root {
            let (uid, gid) = postgres_user().expect("running as root needs a postgres user");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown test dir");
            Some((uid, gid))
        } else {
            None
        };
        let me = Self {
            dir,
            bin,
            port: free_port(),
            owner,
        };
        let data = me.data();
        let out = me
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me.pg_ctl("start");
        Some(me)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn pg_ctl(&self, action: &str) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, action])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Restarts the server (clients' connections break).
    pub fn restart(&mut self) {
        self.pg_ctl("restart");
    }

    /// A libpq URL for the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown); [`TestPostgres::start_again`] brings it back.
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts a stopped server again on the same port and data.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}
