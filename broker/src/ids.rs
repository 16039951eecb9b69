//! Random identifiers (grant, rule and anomaly ids, and the bytes of trace ids): 64 bits from the operating system's
//! generator, hex, after a prefix. A generator failure is an error, never an all-zero or
//! repeated id.

use ring::rand::{SecureRandom, SystemRandom};

/// The operating system's random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// `N` bytes from the operating system's generator (trace and span ids, [`random_id`]).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
    Ok(b)
}

/// A new id: `prefix`, `-`, 16 lowercase hex digits.
pub fn random_id(prefix: &str) -> Result<String, RandomError> {
    let b = random_bytes::<8>()?;
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
