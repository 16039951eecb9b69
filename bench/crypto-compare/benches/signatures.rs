//! Sign and verify one JWS signing input (a 352-byte header.payload, the size of a
//! broker access token's) with each provider the broker could use.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const INPUT: &[u8] = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImJyb2tlci0yMDI2LTEyLTA0IiwidHlwIjoiYXQrand0In0.eyJpc3MiOiJodHRwczovL2Jyb2tlci5leGFtcGxlLm9yZyIsInN1YiI6InBheW1lbnRzLWFwaSIsImF1ZCI6Imh0dHBzOi8vbGVkZ2VyLnByb2QuZXhhbXBsZS5vcmciLCJzY29wZSI6ImxlZGdlcjpyZWFkIGxlZGdlcjp3cml0ZSIsInRhc2siOiJsZWRnZXItd3JpdGUiLCJpYXQiOjE3OTY0MDAwMDAsImV4cCI6MTc5NjQwMDYwMCwianRpIjoiMDFKRVhBTVBMRSJ9";

fn ring_sigs(c: &mut Criterion) {
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let rng = SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pk8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref(), &rng).unwrap();
    c.bench_function("ring/ed25519/sign", |b| b.iter(|| ed.sign(black_box(INPUT))));
    c.bench_function("ring/es256/sign", |b| {
        b.iter(|| ec.sign(&rng, black_box(INPUT)).unwrap())
    });
    let sig = ed.sign(INPUT);
    let pk = signature::UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    c.bench_function("ring/ed25519/verify", |b| {
        b.iter(|| pk.verify(black_box(INPUT), sig.as_ref()).unwrap())
    });
    let sig = ec.sign(&rng, INPUT).unwrap();
    let pk = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        ec.public_key().as_ref().to_vec(),
    );
    c.bench_function("ring/es256/verify", |b| {
        b.iter(|| pk.verify(black_box(INPUT), sig.as_ref()).unwrap())
    });
}

fn aws_lc_sigs(c: &mut Criterion) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let rng = SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pk8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref()).unwrap();
    c.bench_function("aws-lc-rs/ed25519/sign", |b| b.iter(|| ed.sign(black_box(INPUT))));
    c.bench_function("aws-lc-rs/es256/sign", |b| {
        b.iter(|| ec.sign(&rng, black_box(INPUT)).unwrap())
    });
    let sig = ed.sign(INPUT);
    let pk = signature::UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    c.bench_function("aws-lc-rs/ed25519/verify", |b| {
        b.iter(|| pk.verify(black_box(INPUT), sig.as_ref()).unwrap())
    });
    let sig = ec.sign(&rng, INPUT).unwrap();
    let pk = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        ec.public_key().as_ref().to_vec(),
    );
    c.bench_function("aws-lc-rs/es256/verify", |b| {
        b.iter(|| pk.verify(black_box(INPUT), sig.as_ref()).unwrap())
    });
}

fn dalek_sigs(c: &mut Criterion) {
    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
    let key = SigningKey::generate(&mut rand_core::OsRng);
    c.bench_function("ed25519-dalek/sign", |b| b.iter(|| key.sign(black_box(INPUT))));
    let sig = key.sign(INPUT);
    let vk = key.verifying_key();
    c.bench_function("ed25519-dalek/verify", |b| {
        b.iter(|| vk.verify(black_box(INPUT), &sig).unwrap())
    });
}

fn rustcrypto_p256(c: &mut Criterion) {
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    let key = SigningKey::random(&mut rand_core::OsRng);
    c.bench_function("p256/es256/sign", |b| {
        b.iter(|| -> Signature { key.sign(black_box(INPUT)) })
    });
    let sig: Signature = key.sign(INPUT);
    let vk = VerifyingKey::from(&key);
    c.bench_function("p256/es256/verify", |b| {
        b.iter(|| vk.verify(black_box(INPUT), &sig).unwrap())
    });
}

criterion_group!(benches, ring_sigs, aws_lc_sigs, dalek_sigs, rustcrypto_p256);
criterion_main!(benches);
