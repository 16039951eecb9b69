//! The token endpoint's `application/x-www-form-urlencoded` body as name/value pairs.
//!
//! The rules are exactly those of `form_urlencoded::parse` (the WHATWG URL standard's
//! parser, which `serde_urlencoded` uses):
//! - the body is split at `&` and empty pieces are skipped;
//! - each piece is split into name and value at its first `=` (no `=`: an empty value);
//! - `+` becomes a space and percent escapes are decoded;
//! - invalid UTF-8 becomes U+FFFD.
//!
//! The one difference is speed. A piece with nothing to decode (no `%` or `+`) is only
//! checked as UTF-8 and borrowed. A subject token (base64url and dots) is always such a
//! piece. Run through the general decoder, a byte at a time, it cost ~3 % of an issuance's
//! instructions (BENCHMARKS.md, issue 13). Any other piece goes to `form_urlencoded`
//! itself.

use std::borrow::Cow;

/// The pairs of `body`, in order, as `form_urlencoded::parse(body)` yields them.
pub(super) fn pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    body.split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            if piece.iter().any(|&b| b == b'%' || b == b'+') {
                // A piece holds no `&`: exactly one pair.
                form_urlencoded::parse(piece).next().unwrap_or_default()
            } else {
                let (name, value) = match piece.iter().position(|&b| b == b'=') {
                    Some(i) => (&piece[..i], &piece[i + 1..]),
                    None => (piece, &b""[..]),
                };
                (
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value),
                )
            }
        })
}

#[cfg(test)]
mod tests {
    use super::pairs;

    fn same_as_form_urlencoded(body: &[u8]) {
        let ours: Vec<(String, String)> = pairs(body)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        let theirs: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(ours, theirs, "body {body:?}");
    }

    #[test]
    fn pairs_match_form_urlencoded_on_chosen_bodies() {
        for body in [
            &b""[..],
            b"&",
            b"&&a=1&&",
            b"a",
            b"a=",
            b"=b",
            b"=",
            b"a==b",
            b"a=b=c",
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&task=demo",
            b"scope=read+write&scope=x",
            b"a=%zz&b=%4&c=%&d=%41%42",
            b"a=\xff\xfe&\xc3=\xc3\xa9",
            b"a=%ff%c3%a9",
            b"subject_token=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_&task=t",
            b"a+b=c+d",
        ] {
            same_as_form_urlencoded(body);
        }
    }

    #[test]
    fn pairs_match_form_urlencoded_on_generated_bodies() {
        // Deterministic pseudo-random bodies over the bytes that matter to the parser.
        const ALPHABET: &[u8] = b"a=&%+2F0g\xff\xc3\xa9 ";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let mut y = x;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    y = y.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ALPHABET[((y >> 33) % ALPHABET.len() as u64) as usize]
                })
                .collect();
            same_as_form_urlencoded(&body);
        }
    }

    #[test]
    fn a_piece_with_nothing_to_decode_is_borrowed() {
        let body = b"subject_token=abc.def-_&task=demo";
        for (n, v) in pairs(body) {
            assert!(matches!(n, std::borrow::Cow::Borrowed(_)));
            assert!(matches!(v, std::borrow::Cow::Borrowed(_)));
        }
    }
}
