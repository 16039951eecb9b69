//! Random identifiers (grant, rule and anomaly ids): 64 bits from the operating system's
//! generator, hex, after a prefix. A generator failure is an error, never an all-zero or
//! repeated id.

use ring::rand::{SecureRandom, SystemRandom};

/// The operating system's random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// A new id: `prefix`, `-`, 16 lowercase hex digits.
pub fn random_id(prefix: &str) -> Result<String, RandomError> {
    let mut b = [0u8; 8];
    SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    for x in b {
        id.push_str(&format!("{x:02x}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_prefix_and_differ() {
        let a = random_id("bg").unwrap();
        let b = random_id("bg").unwrap();
        assert!(a.starts_with("bg-") && a.len() == 19, "{a}");
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
