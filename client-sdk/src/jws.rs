//! The one compact-JWS splitter of the project (RFC 7515 §7.1), shared by the SDK's
//! verifier and the broker (workload JWTs, its own tokens, `broker token decode`): three
//! base64url parts separated by dots, decoded; nothing parsed further, nothing verified.
//! And the one strict JSON object parser for those parts ([`strict_object`]).

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

/// Parses `bytes` as a JSON object whose objects, at every depth, have unique member
/// names; the error says which member appears twice, or why it is not an object.
///
/// RFC 7519 §4 lets a JWT parser reject duplicate claim names or take the last. Taking
/// the last would let `{"sub":"evil",…,"sub":"<real>"}`, or a DPoP header's
/// `"jwk":{"x":"<one key>","x":"<another>"}`, mean one thing here and another to a
/// first-wins parser elsewhere, so the broker and the SDK both reject them.
pub fn strict_object(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(serde_json::Value::Object(m))) => Ok(m),
        Ok(_) => Err("not an object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A JSON value with unique member names in every object.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = a.next_element()? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = a.next_key::<String>()? {
            let StrictValue(v) = a.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "member {:?} appears twice",
                    truncated(&key, 64)
                )));
            }
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// At most `max` bytes of `s` (on a character boundary), marked when cut.
fn truncated(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
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

    #[test]
    fn duplicate_member_names_are_refused_at_every_depth() {
        assert!(strict_object(br#"{"sub":"a","x":{"y":1,"z":[{"k":1}]}}"#).is_ok());
        let e = strict_object(br#"{"sub":"evil","aud":"b","sub":"real"}"#).unwrap_err();
        assert!(e.contains("\"sub\" appears twice"), "{e}");
        assert!(strict_object(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert!(strict_object(br#"{"a":[{"b":1,"b":2}]}"#).is_err());
        assert!(strict_object(br#"[1]"#).is_err());
        let long = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "é".repeat(40));
        let e = strict_object(long.as_bytes()).unwrap_err();
        assert!(e.contains('…') && e.len() < 200, "{e}");
    }
}
