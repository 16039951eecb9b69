//! Random identifiers (grant, rule and anomaly ids, token `jti`s, trace and span ids):
//! bytes from the operating system's generator. A generator failure is an error, never
//! an all-zero or repeated id.
//!
//! Identifiers are public once issued, and there are several per request. So they come
//! from [`id_bytes`], a per-thread pool that one `getrandom` call fills 4 KiB at a time,
//! instead of a syscall each (four a request before; BENCHMARKS.md, issue 13). Every pooled
//! byte is handed out once and zeroed. Secrets (keys, signature nonces, console session
//! tokens) never come from the pool: they call the generator directly.

use std::cell::RefCell;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

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

/// Bytes in the pool when it is refilled.
const POOL_BYTES: usize = 4096;

/// One thread's unused generator output: `buf[pos..]` is still to be handed out.
struct Pool {
    buf: [u8; POOL_BYTES],
    pos: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            buf: [0; POOL_BYTES],
            pos: POOL_BYTES,
        })
    };
}

/// `N` bytes of the operating system's generator for a public identifier (see the module
/// documentation): from this thread's pool, refilled with one call when it runs short.
pub fn id_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    if N > POOL_BYTES / 4 {
        return random_bytes::<N>();
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if POOL_BYTES - pool.pos < N {
            // Left empty if the generator fails, so a failure is never papered over.
            pool.pos = POOL_BYTES;
            SystemRandom::new()
                .fill(&mut pool.buf)
                .map_err(|_| RandomError)?;
            pool.pos = 0;
        }
        let start = pool.pos;
        let taken = &mut pool.buf[start..start + N];
        let mut out = [0u8; N];
        out.copy_from_slice(taken);
        taken.fill(0);
        pool.pos += N;
        Ok(out)
    })
}

/// A new id: `prefix`, `-`, 16 lowercase hex digits.
pub fn random_id(prefix: &str) -> Result<String, RandomError> {
    let b = id_bytes::<8>()?;
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    crate::hex::push_hex_str(&mut id, &b);
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

    #[test]
    fn pooled_bytes_are_never_handed_out_twice_across_refills() {
        // 3 refills' worth of 16-byte ids on this thread: all distinct, none all-zero (a
        // reused or zeroed slot would repeat), and the pool refills at its end.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * POOL_BYTES / 16 + 7 {
            let b = id_bytes::<16>().unwrap();
            assert_ne!(b, [0; 16]);
            assert!(seen.insert(b), "an id repeated");
        }
        // Sizes that do not divide the pool still never straddle a refill.
        for _ in 0..2 * POOL_BYTES / 24 {
            let b = id_bytes::<24>().unwrap();
            assert!(seen.insert(b[..16].try_into().unwrap()));
        }
        // Other threads have pools of their own.
        let other = std::thread::spawn(id_bytes::<16>).join().unwrap().unwrap();
        assert!(seen.insert(other));
        // Larger requests go to the generator directly.
        assert_ne!(id_bytes::<2048>().unwrap(), [0; 2048]);
    }
}
