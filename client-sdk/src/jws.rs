//! The one compact-JWS splitter of the project (RFC 7515 §7.1), shared by the SDK's
//! verifier and the broker (workload JWTs, its own tokens, `broker token decode`): three
//! base64url parts separated by dots, decoded; nothing parsed further, nothing verified.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A compact JWS split and decoded. The bytes are not yet JSON-parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact<'a> {
    /// The decoded protected header.
    pub header: Vec<u8>,
    /// The decoded payload.
    pub payload: Vec<u8>,
    /// `header.payload` as sent: what the signature covers.
    pub signing_input: &'a [u8],
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Which part of a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The protected header.
    Header,
    /// The payload.
    Payload,
    /// The signature.
    Signature,
}

impl Part {
    /// `header`, `payload` or `signature`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        }
    }
}

/// Why a string is not a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// Longer than the caller's bound (checked before anything else is done with it).
    TooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not exactly three dot-separated parts.
    NotThreeParts,
    /// A part is not unpadded base64url.
    NotBase64url(Part),
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitError::TooLong { len, max } => {
                write!(f, "{len} bytes, more than the {max} accepted")
            }
            SplitError::NotThreeParts => {
                f.write_str("not a compact JWS (three base64url parts separated by dots)")
            }
            SplitError::NotBase64url(p) => write!(f, "the {} is not base64url", p.as_str()),
        }
    }
}

impl std::error::Error for SplitError {}

/// Splits `token` (at most `max_len` bytes) into its three decoded parts.
pub fn split(token: &str, max_len: usize) -> Result<Compact<'_>, SplitError> {
    if token.len() > max_len {
        return Err(SplitError::TooLong {
            len: token.len(),
            max: max_len,
        });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SplitError::NotThreeParts);
    };
    let dec = |x: &str, part| {
        URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| SplitError::NotBase64url(part))
    };
    Ok(Compact {
        header: dec(h, Part::Header)?,
        payload: dec(p, Part::Payload)?,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: dec(s, Part::Signature)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_refuses_precisely() {
        let c = split("e30.eyJhIjoxfQ.c2ln", 100).unwrap();
        assert_eq!(c.header, b"{}");
        assert_eq!(c.payload, br#"{"a":1}"#);
        assert_eq!(c.signing_input, b"e30.eyJhIjoxfQ");
        assert_eq!(c.signature, b"sig");
        assert_eq!(split("a.b", 100), Err(SplitError::NotThreeParts));
        assert_eq!(split("a.b.c.d", 100), Err(SplitError::NotThreeParts));
        assert_eq!(
            split("e30.e30.c2ln", 5),
            Err(SplitError::TooLong { len: 12, max: 5 })
        );
        assert_eq!(
            split("e3=.e30.c2ln", 100),
            Err(SplitError::NotBase64url(Part::Header))
        );
        assert_eq!(
            split("e30.e30.!!", 100),
            Err(SplitError::NotBase64url(Part::Signature))
        );
    }
}
