//! Break-glass policies: `*.toml` files in `<policy dir>/break-glass/`, one
//! `[break_glass]` table each. They say which identities may receive emergency access,
//! the broader tasks they may get (still one audience per token), the hard maximum
//! duration (required: lint refuses a policy without one), how many approvers are needed
//! (0: self-service but loud) and which on-call identities may request besides admins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{AudienceEntry, parse_duration};
use crate::policy::LintError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    break_glass: PolicyFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    identities: Vec<String>,
    #[serde(default)]
    requesters: Vec<String>,
    max_duration: String,
    approvals: u32,
    task: Vec<TaskFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    name: String,
    audience: String,
    scopes: Vec<String>,
    max_ttl: String,
}

/// A break-glass task: what an active grant lets the target request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassTask {
    /// Task name (requested through the normal token endpoint).
    pub name: String,
    /// The one audience.
    pub audience: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Longest token lifetime (also capped by the grant's end).
    pub max_ttl: Duration,
}

/// One break-glass policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassPolicy {
    /// Name.
    pub name: String,
    /// Identities that may receive emergency access.
    pub identities: Vec<String>,
    /// Registry identities (on-call) allowed to request, besides admins.
    pub requesters: Vec<String>,
    /// Hard maximum duration of a grant.
    pub max_duration: Duration,
    /// Approvals needed (0: none).
    pub approvals: u32,
    /// The tasks.
    pub tasks: Vec<BreakGlassTask>,
    /// Source file.
    pub file: PathBuf,
}

/// All break-glass policies.
#[derive(Debug, Clone, Default)]
pub struct BreakGlassPolicies {
    /// The policies.
    pub policies: Vec<BreakGlassPolicy>,
}

impl BreakGlassPolicies {
    /// The policy covering `identity` and `task`, if any.
    pub fn find(&self, identity: &str, task: &str) -> Option<(&BreakGlassPolicy, &BreakGlassTask)> {
        self.policies.iter().find_map(|p| {
            if !p.identities.iter().any(|i| i == identity) {
                return None;
            }
            p.tasks.iter().find(|t| t.name == task).map(|t| (p, t))
        })
    }

    /// Whether any policy covers `identity`.
    pub fn covers(&self, identity: &str) -> bool {
        self.policies
            .iter()
            .any(|p| p.identities.iter().any(|i| i == identity))
    }
}

/// Loads `<dir>/break-glass/*.toml` (absent directory: no policies).
pub fn load(dir: &Path, audiences: &[AudienceEntry]) -> Result<BreakGlassPolicies, Vec<LintError>> {
    let bg_dir = dir.join("break-glass");
    let mut errors = Vec::new();
    let mut out = BreakGlassPolicies::default();
    let Ok(rd) = std::fs::read_dir(&bg_dir) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let err = |message: String| LintError {
            file: path.clone(),
            message,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(err(e.to_string()));
                continue;
            }
        };
        let f: File = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                errors.push(err(e.message().to_owned()));
                continue;
            }
        };
        let p = f.break_glass;
        if let Some(other) = names.insert(p.name.clone(), path.clone()) {
            errors.push(err(format!(
                "break-glass policy {} is also declared in {}",
                p.name,
                other.display()
            )));
        }
        let max_duration = match parse_duration(&p.max_duration) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errors.push(err("max_duration must be greater than zero".into()));
                continue;
            }
            Err(e) => {
                errors.push(err(format!("max_duration: {e}")));
                continue;
            }
        };
        if p.identities.is_empty() {
            errors.push(err("identities must name at least one identity".into()));
        }
        if p.task.is_empty() {
            errors.push(err("give at least one [[break_glass.task]]".into()));
        }
        let mut tasks = Vec::new();
        for t in p.task {
            if !audiences.is_empty() && !audiences.iter().any(|a| a.uri == t.audience) {
                errors.push(err(format!(
                    "task {}: audience {:?} is not in the audience catalogue",
                    t.name, t.audience
                )));
            }
            match parse_duration(&t.max_ttl) {
                Ok(d) if !d.is_zero() => tasks.push(BreakGlassTask {
                    name: t.name,
                    audience: t.audience,
                    scopes: t.scopes,
                    max_ttl: d,
                }),
                _ => errors.push(err(format!(
                    "task {}: max_ttl must be a positive duration",
                    t.name
                ))),
            }
        }
        out.policies.push(BreakGlassPolicy {
            name: p.name,
            identities: p.identities,
            requesters: p.requesters,
            max_duration,
            approvals: p.approvals,
            tasks,
            file: path.clone(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("break-glass")).unwrap();
        std::fs::write(dir.join("break-glass").join(name), text).unwrap();
    }

    const GOOD: &str = r#"
[break_glass]
name = "ledger-emergency"
identities = ["payments-api"]
requesters = ["oncall"]
max_duration = "1h"
approvals = 1
[[break_glass.task]]
name = "ledger-admin"
audience = "https://ledger.prod.example.org"
scopes = ["ledger:admin"]
max_ttl = "15m"
"#;

    #[test]
    fn loads_and_finds() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.toml", GOOD);
        let p = load(d.path(), &[]).unwrap();
        let (pol, task) = p.find("payments-api", "ledger-admin").unwrap();
        assert_eq!(pol.max_duration, Duration::from_secs(3600));
        assert_eq!(task.max_ttl, Duration::from_secs(900));
        assert!(p.find("other", "ledger-admin").is_none());
    }

    #[test]
    fn a_policy_without_max_duration_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.toml",
            &GOOD.replace("max_duration = \"1h\"\n", ""),
        );
        let errs = load(d.path(), &[]).unwrap_err();
        assert!(errs[0].to_string().contains("max_duration"), "{}", errs[0]);
        assert!(errs[0].to_string().contains("a.toml"));
    }

    #[test]
    fn no_directory_means_no_policies() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), &[]).unwrap().policies.is_empty());
    }
}
