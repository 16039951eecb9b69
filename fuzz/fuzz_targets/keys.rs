//! The PEM/key loaders: `broker::mint::keys::KeyRing::load_dir_file` (a PKCS#8
//! `PRIVATE KEY` PEM file, as `broker serve` reads its key directory),
//! `LocalSigner::from_pkcs8` (DER), and a published `Jwks` document (as `audit verify
//! --jwks` reads it) with `verifying_key` and signature checks. A key that loads signs a
//! message, which must verify with its own public JWK.
//!
//! Input: the first byte picks the mode (`% 3`): 0 the rest is a PEM file, 1 DER, 2 JWKS.
#![no_main]

use broker::mint::keys::{Jwks, KeyRing, LocalSigner, Signer};
use broker_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fn round_trip(s: &dyn Signer) {
    let msg = b"fuzz";
    let sig = s.sign(msg).expect("a loaded key signs");
    let vk = s.public_jwk().verifying_key().expect("own JWK is usable");
    assert!(vk.verify(msg, &sig), "a loaded key's signature must verify");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let dir = scratch();
            let path = dir.path().join("000000000001-ES256-fuzz.pem");
            std::fs::write(&path, rest).expect("write");
            match KeyRing::load_dir_file(&path) {
                Ok(s) => round_trip(s.as_ref()),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            let _ = KeyRing::load_dir(dir.path()).map(|r| r.jwks());
        }
        1 => {
            if let Ok(s) = LocalSigner::from_pkcs8(rest) {
                round_trip(&s);
            }
        }
        _ => {
            if let Ok(jwks) = serde_json::from_slice::<Jwks>(rest) {
                for k in &jwks.keys {
                    if let Some(vk) = jwks.verifying_key(&k.kid) {
                        let _ = vk.verify(b"msg", &[0u8; 64]);
                        let _ = vk.verify(b"msg", rest);
                    }
                }
            }
        }
    }
});
