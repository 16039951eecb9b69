//! Signing keys held in a PKCS#11 token (an HSM, a cloud KMS's PKCS#11 library, SoftHSM2).
//!
//! The private key never enters the broker's memory: the broker finds it by label in the
//! token, reads only its public half (`CKA_EC_POINT`), and asks the token to sign.
//!
//! - ES256: the broker computes the SHA-256 digest and the token signs it with `CKM_ECDSA`;
//!   PKCS#11 returns `r || s` (32 bytes each), which is already the JOSE form (RFC 7518
//!   §3.4).
//! - EdDSA (Ed25519): the token signs the message with `CKM_EDDSA` (pure Ed25519, no
//!   parameters). Tokens that lack the mechanism are refused at [`open`].
//!
//! The `kid` is the RFC 7638 thumbprint of the public JWK, as for file keys, so a key keeps
//! its `kid` wherever it lives.
//!
//! The PIN is read from `pin_file` at login (and again only if the token forgets the login),
//! held in zeroizing memory, and never logged or put in an error. PKCS#11 logs an
//! application in per token: every session of this process on that token shares the login.
//!
//! Sessions are `Send` but not `Sync` (a PKCS#11 session must not be used by two threads at
//! once), so each signer keeps a small pool of sessions: [`Signer::sign`] takes an idle one,
//! or opens one up to the pool's size, or waits for one to come back. Many threads can sign
//! at once.
//!
//! A module (`.so`) is loaded and `C_Initialize`d once per process, and shared by every
//! signer that names it: PKCS#11 libraries keep process-wide state. The broker calls
//! [`finalize_unused`] (`C_Finalize`) as it exits, once no signer is left.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::RawAuthPin;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::keys::{self, KeyError, KeyRing, PublicJwk, Signer, SigningAlgorithm, VerifyingKey};

/// DER of the OID 1.2.840.10045.3.1.7 (P-256, `secp256r1`), the `CKA_EC_PARAMS` of a P-256 key.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID 1.3.101.112 (Ed25519, RFC 8410).
const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString `edwards25519`: the curve name PKCS#11 3.0 also allows (and older
/// SoftHSM2 releases require).
const ED25519_NAME_PARAMS: &[u8] = &[
    0x13, 0x0c, b'e', b'd', b'w', b'a', b'r', b'd', b's', b'2', b'5', b'5', b'1', b'9',
];

/// Sessions a signer opens at most (fewer if the token allows fewer).
const MAX_SESSIONS: usize = 8;

/// A signing key in a PKCS#11 token: `[signing] pkcs11 = { ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 library, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The slot id. With `token_label` as well, both must match. Neither: the module's
    /// only initialized token.
    #[serde(default)]
    pub slot: Option<u64>,
    /// The token's label (the usual way to name a token: slot ids can change).
    #[serde(default)]
    pub token_label: Option<String>,
    /// A file holding the user PIN (a trailing newline is ignored). Keep it mode 0600.
    pub pin_file: PathBuf,
    /// The private key's `CKA_LABEL`; if no key has that label and it is hex, its `CKA_ID`.
    pub key_label: String,
}

/// Errors of opening, generating in and signing with a PKCS#11 token. No message carries
/// the PIN or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module could not be loaded or initialized.
    #[error("PKCS#11 module {path}: {reason}")]
    Module {
        /// The library.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No slot, or more than one, matches the configuration.
    #[error("PKCS#11 module {module}: {reason}")]
    Token {
        /// The library.
        module: PathBuf,
        /// What matched (or did not).
        reason: String,
    },
    /// The PIN file could not be read.
    #[error("PKCS#11 PIN file {path}: {source}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The PIN file is empty.
    #[error("PKCS#11 PIN file {0} is empty")]
    PinFileEmpty(PathBuf),
    /// The token refused the PIN.
    #[error("PKCS#11 token {token:?}: the PIN in {pin_file} is incorrect")]
    PinIncorrect {
        /// The token's label.
        token: String,
        /// Where the PIN came from.
        pin_file: PathBuf,
    },
    /// The token refuses any PIN (too many failed attempts).
    #[error("PKCS#11 token {token:?}: the user PIN is locked")]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// No private key has the configured label (or id).
    #[error("PKCS#11 token {token:?}: no private key labelled {label:?}")]
    KeyNotFound {
        /// The token's label.
        token: String,
        /// The configured `key_label`.
        label: String,
    },
    /// More than one private key has the configured label.
    #[error("PKCS#11 token {token:?}: {count} private keys are labelled {label:?}")]
    KeyAmbiguous {
        /// The token's label.
        token: String,
        /// The configured `key_label`.
        label: String,
        /// How many.
        count: usize,
    },
    /// Generation was asked for a label a key already has.
    #[error("PKCS#11 token {token:?}: a key labelled {label:?} already exists")]
    KeyExists {
        /// The token's label.
        token: String,
        /// The label.
        label: String,
    },
    /// The key is not one the broker signs with, or its public half is unreadable.
    #[error("PKCS#11 key {label:?}: {reason}")]
    UnsupportedKey {
        /// The configured `key_label`.
        label: String,
        /// What is wrong.
        reason: String,
    },
    /// The token lacks a mechanism the key's algorithm needs.
    #[error("PKCS#11 token {token:?} does not support {mechanism}")]
    Mechanism {
        /// The token's label.
        token: String,
        /// The mechanism, e.g. `CKM_EDDSA`.
        mechanism: &'static str,
    },
    /// A signature made at open did not verify with the key's public half: the token's
    /// public key object does not belong to the private key.
    #[error("PKCS#11 key {0:?}: a test signature does not verify with its public key")]
    SelfTest(String),
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {op}: {source}")]
    Call {
        /// What was being done.
        op: &'static str,
        /// The module's answer.
        source: CkError,
    },
}

impl From<Pkcs11Error> for KeyError {
    fn from(e: Pkcs11Error) -> Self {
        let path = match &e {
            Pkcs11Error::Module { path, .. } => path.clone(),
            Pkcs11Error::Token { module, .. } => module.clone(),
            Pkcs11Error::PinFile { path, .. } | Pkcs11Error::PinFileEmpty(path) => path.clone(),
            Pkcs11Error::PinIncorrect { pin_file, .. } => pin_file.clone(),
            _ => PathBuf::from("pkcs11"),
        };
        KeyError::Invalid {
            path,
            reason: e.to_string(),
        }
    }
}

fn call(op: &'static str) -> impl FnOnce(CkError) -> Pkcs11Error {
    move |source| Pkcs11Error::Call { op, source }
}

/// The modules loaded in this process, by canonical path: loaded and initialized once,
/// never finalized (other signers, or a later one, may use the same module).
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// How many [`Pkcs11Signer`]s are alive in this process (each holds sessions).
static LIVE_SIGNERS: AtomicUsize = AtomicUsize::new(0);

/// Counts one live signer; its drop (the signer's last field, so after its sessions have
/// closed) uncounts it.
struct LiveSigner;

impl LiveSigner {
    fn counted() -> Self {
        LIVE_SIGNERS.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for LiveSigner {
    fn drop(&mut self) {
        LIVE_SIGNERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Finalizes (`C_Finalize`) every module this process loaded, if no signer is left;
/// returns how many it finalized (none while a signer is alive).
///
/// For the end of the process: the PKCS#11 standard asks an application that is done
/// with a module to finalize it, and a module left to its own exit-time destructors may
/// tear down what it shares with other libraries in the wrong order (SoftHSM2 with the
/// OpenSSL it links). A module stays loaded after it (its code is not unmapped while the
/// process runs), and a later signer initializes it again.
pub fn finalize_unused() -> usize {
    let mut modules = lock(&MODULES);
    let live = LIVE_SIGNERS.load(Ordering::SeqCst);
    if live > 0 {
        if !modules.is_empty() {
            tracing::warn!(
                live,
                "PKCS#11 modules left initialized: signers are still alive"
            );
        }
        return 0;
    }
    let mut finalized = 0;
    for (path, ctx) in modules.drain() {
        // `finalize` consumes its handle; the clone, never dropped, keeps the library
        // mapped (dropping the last handle unloads it, running its destructors now).
        std::mem::forget(ctx.clone());
        match ctx.finalize() {
            Ok(()) => {
                tracing::info!(module = %path.display(), "PKCS#11 module finalized");
                finalized += 1;
            }
            Err(e) => {
                tracing::warn!(module = %path.display(), error = %e, "C_Finalize failed");
            }
        }
    }
    finalized
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let err = |reason: String| Pkcs11Error::Module {
        path: path.to_path_buf(),
        reason,
    };
    let canonical = fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
    let mut modules = lock(&MODULES);
    if let Some(ctx) = modules.get(&canonical) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| err(format!("cannot load: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(format!("C_Initialize: {e}"))),
    }
    modules.insert(canonical, ctx.clone());
    Ok(ctx)
}

/// The slot the configuration names, and its token's label.
fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<(Slot, String), Pkcs11Error> {
    let token_err = |reason: String| Pkcs11Error::Token {
        module: config.module.clone(),
        reason,
    };
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(call("C_GetSlotList"))?;
    let mut found = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(call("C_GetTokenInfo"))?;
        let label = info.label().trim_end().to_owned();
        labels.push(format!("{label:?} (slot {})", slot.id()));
        let slot_ok = config.slot.is_none_or(|id| id == slot.id());
        let label_ok = config.token_label.as_ref().is_none_or(|l| *l == label);
        if slot_ok && label_ok {
            found.push((slot, label));
        }
    }
    let wanted = match (&config.token_label, config.slot) {
        (Some(l), Some(s)) => format!("token {l:?} in slot {s}"),
        (Some(l), None) => format!("token {l:?}"),
        (None, Some(s)) => format!("an initialized token in slot {s}"),
        (None, None) => "an initialized token".to_owned(),
    };
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(token_err(format!(
            "no {wanted}; tokens: {}",
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        ))),
        _ => Err(token_err(format!(
            "more than one {wanted} ({}): set `token_label` or `slot`",
            labels.join(", ")
        ))),
    }
}

/// Reads the PIN file, a trailing newline dropped. The bytes are zeroized when dropped.
fn read_pin_bytes(path: &Path) -> Result<Zeroizing<Vec<u8>>, Pkcs11Error> {
    let raw = Zeroizing::new(fs::read(path).map_err(|source| Pkcs11Error::PinFile {
        path: path.to_path_buf(),
        source,
    })?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(pin_file = %path.display(), "PKCS#11 PIN file is readable by others: chmod 600 it");
        }
    }
    let mut pin: &[u8] = &raw;
    while let [rest @ .., b'\n' | b'\r'] = pin {
        pin = rest;
    }
    if pin.is_empty() {
        return Err(Pkcs11Error::PinFileEmpty(path.to_path_buf()));
    }
    Ok(Zeroizing::new(pin.to_vec()))
}

/// The PIN as cryptoki takes it (a `SecretBox`, zeroized on drop).
fn read_pin(path: &Path) -> Result<RawAuthPin, Pkcs11Error> {
    let pin = read_pin_bytes(path)?;
    Ok(RawAuthPin::new(Box::new(pin.to_vec())))
}

/// Logs the user in on `session` (and so on every session of this process on the token).
fn login(session: &Session, config: &Pkcs11Config, token: &str) -> Result<(), Pkcs11Error> {
    let pin = read_pin(&config.pin_file)?;
    match session.login_with_raw(UserType::User, &pin) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(Pkcs11Error::PinIncorrect {
            token: token.to_owned(),
            pin_file: config.pin_file.clone(),
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
            token: token.to_owned(),
        }),
        Err(e) => Err(Pkcs11Error::Call {
            op: "C_Login",
            source: e,
        }),
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The private keys labelled `label` (or, failing that, with `CKA_ID` = hex `label`).
fn find_private_keys(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, Pkcs11Error> {
    let by_label = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(call("C_FindObjects"))?;
    if !by_label.is_empty() {
        return Ok(by_label);
    }
    match hex_decode(label) {
        Some(id) => session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id),
            ])
            .map_err(call("C_FindObjects")),
        None => Ok(Vec::new()),
    }
}

/// The bytes of an attribute, or `None` if the object has none.
fn attr_bytes(
    session: &Session,
    obj: ObjectHandle,
    ty: AttributeType,
) -> Result<Option<Vec<u8>>, Pkcs11Error> {
    let attrs = session
        .get_attributes(obj, &[ty])
        .map_err(call("C_GetAttributeValue"))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(v) | Attribute::EcParams(v) | Attribute::Id(v) | Attribute::Label(v) => {
            Some(v)
        }
        _ => None,
    }))
}

/// The raw public key in a `CKA_EC_POINT`: DER OCTET STRING around it (the standard form)
/// or, as some tokens return, the bare bytes. `len` is 65 (uncompressed P-256) or 32
/// (Ed25519).
fn parse_ec_point(value: &[u8], len: usize) -> Option<Vec<u8>> {
    let raw = match value {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => rest,
        // Long-form length (never needed for these sizes, but valid DER-ish encodings).
        [0x04, 0x81, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => rest,
        bare if bare.len() == len => bare,
        _ => return None,
    };
    if len == 65 && raw.first() != Some(&0x04) {
        return None;
    }
    Some(raw.to_vec())
}

fn jwk_for(alg: SigningAlgorithm, public: &[u8]) -> PublicJwk {
    keys::with_thumbprint_kid(match alg {
        SigningAlgorithm::ES256 => PublicJwk::p256(&public[1..33], &public[33..65]),
        SigningAlgorithm::EdDSA => PublicJwk::ed25519(public),
    })
}

/// The algorithm of the private key `key`, and its public half read from the token.
fn public_key(
    session: &Session,
    key: ObjectHandle,
    label: &str,
) -> Result<(SigningAlgorithm, Vec<u8>), Pkcs11Error> {
    let unsupported = |reason: String| Pkcs11Error::UnsupportedKey {
        label: label.to_owned(),
        reason,
    };
    let attrs = session
        .get_attributes(key, &[AttributeType::KeyType, AttributeType::Sign])
        .map_err(call("C_GetAttributeValue"))?;
    let mut key_type = None;
    let mut can_sign = false;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Sign(s) => can_sign = s,
            _ => {}
        }
    }
    if !can_sign {
        return Err(unsupported("the private key has CKA_SIGN false".into()));
    }
    let params = attr_bytes(session, key, AttributeType::EcParams)?;
    let alg = match (key_type, params.as_deref()) {
        (Some(KeyType::EC), Some(P256_PARAMS)) => SigningAlgorithm::ES256,
        (Some(KeyType::EC_EDWARDS), Some(ED25519_OID_PARAMS | ED25519_NAME_PARAMS)) => {
            SigningAlgorithm::EdDSA
        }
        (Some(KeyType::EC), _) => return Err(unsupported("an EC key not on P-256".into())),
        (Some(KeyType::EC_EDWARDS), _) => {
            return Err(unsupported("an Edwards key not on Ed25519".into()));
        }
        (Some(t), _) => {
            return Err(unsupported(format!(
                "key type {t}: the broker signs with P-256 (ES256) or Ed25519 (EdDSA)"
            )));
        }
        (None, _) => return Err(unsupported("the key has no CKA_KEY_TYPE".into())),
    };
    let point_len = match alg {
        SigningAlgorithm::ES256 => 65,
        SigningAlgorithm::EdDSA => 32,
    };
    // The public key object shares the private key's CKA_ID (or, without one, its label).
    let id = attr_bytes(session, key, AttributeType::Id)?.filter(|id| !id.is_empty());
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    match id {
        Some(id) => template.push(Attribute::Id(id)),
        None => {
            let l = attr_bytes(session, key, AttributeType::Label)?.unwrap_or_default();
            template.push(Attribute::Label(l));
        }
    }
    let publics = session
        .find_objects(&template)
        .map_err(call("C_FindObjects"))?;
    let mut candidates = Vec::new();
    for p in publics {
        if let Some(point) = attr_bytes(session, p, AttributeType::EcPoint)? {
            candidates.push(point);
        }
    }
    if candidates.is_empty() {
        // Some tokens keep only the private object and expose the point on it.
        if let Some(point) = attr_bytes(session, key, AttributeType::EcPoint)? {
            candidates.push(point);
        }
    }
    match candidates.as_slice() {
        [point] => parse_ec_point(point, point_len)
            .map(|p| (alg, p))
            .ok_or_else(|| unsupported("CKA_EC_POINT is not an uncompressed point".into())),
        [] => Err(unsupported(
            "no public key object with the private key's CKA_ID or label".into(),
        )),
        _ => Err(unsupported(format!(
            "{} public key objects share the private key's CKA_ID or label",
            candidates.len()
        ))),
    }
}

fn require_mechanism(
    ctx: &Pkcs11,
    slot: Slot,
    token: &str,
    alg: SigningAlgorithm,
) -> Result<(), Pkcs11Error> {
    let (ty, name) = match alg {
        SigningAlgorithm::ES256 => (MechanismType::ECDSA, "CKM_ECDSA"),
        SigningAlgorithm::EdDSA => (MechanismType::EDDSA, "CKM_EDDSA"),
    };
    let list = ctx
        .get_mechanism_list(slot)
        .map_err(call("C_GetMechanismList"))?;
    if list.contains(&ty) {
        Ok(())
    } else {
        Err(Pkcs11Error::Mechanism {
            token: token.to_owned(),
            mechanism: name,
        })
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Session>,
    open: usize,
}

/// Signing sessions: at most `max` open, each used by one thread at a time.
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

/// A session taken from the pool; back to it on drop unless marked broken.
struct PooledSession<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    broken: bool,
}

impl PooledSession<'_> {
    fn get(&self) -> Option<&Session> {
        self.session.as_ref()
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.pool.state);
        match self.session.take() {
            Some(s) if !self.broken => st.idle.push(s),
            _ => st.open = st.open.saturating_sub(1),
        }
        drop(st);
        self.pool.returned.notify_one();
    }
}

/// A signing key in a PKCS#11 token. Holds no key material: the token signs.
pub struct Pkcs11Signer {
    ctx: Pkcs11,
    slot: Slot,
    token: String,
    config: Pkcs11Config,
    key: ObjectHandle,
    alg: SigningAlgorithm,
    jwk: PublicJwk,
    /// Keeps the login alive for the signer's lifetime (PKCS#11 logs out when the last
    /// session of an application on a token closes).
    login_session: Mutex<Session>,
    pool: Pool,
    /// Last, so that it is dropped after the sessions above have closed.
    _live: LiveSigner,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("kid", &self.jwk.kid)
            .field("alg", &self.alg)
            .field("module", &self.config.module)
            .field("token", &self.token)
            .field("key_label", &self.config.key_label)
            .finish()
    }
}

/// Opens the key the configuration names: loads the module, logs in with the PIN from
/// `pin_file`, finds the private key and reads its public half, and checks with one
/// signature that the two belong together.
pub fn open(config: &Pkcs11Config) -> Result<Arc<dyn Signer>, Pkcs11Error> {
    Ok(Arc::new(Pkcs11Signer::open(config)?))
}

/// The signing keys the broker starts with: the key files in `key_dir` (oldest first)
/// and, with `[signing] pkcs11`, the token's key last, so that it is the newest and signs.
/// With a token key, `key_dir` may hold no key file or not exist (it is created: it keeps
/// the public halves of retired keys).
pub fn key_ring(key_dir: &Path, pkcs11: Option<&Pkcs11Config>) -> Result<KeyRing, KeyError> {
    let Some(config) = pkcs11 else {
        return KeyRing::load_dir(key_dir);
    };
    let mut keys: Vec<Arc<dyn Signer>> = match KeyRing::load_dir(key_dir) {
        Ok(ring) => ring.signers().cloned().collect(),
        Err(KeyError::NoKeys(_)) => {
            fs::create_dir_all(key_dir).map_err(|source| KeyError::Io {
                path: key_dir.to_path_buf(),
                source,
            })?;
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    for token_key in token_keys(config)? {
        keys.retain(|k| k.kid() != token_key.kid());
        keys.push(token_key);
    }
    KeyRing::new(keys).ok_or_else(|| KeyError::NoKeys(key_dir.to_path_buf()))
}

/// What separates `key_label` from the suffix of the keys the broker generates in the
/// token when it rotates: `<key_label>@<unix seconds, 12 digits>.<8 hex digits>`.
pub const ROTATED_LABEL_SEPARATOR: char = '@';

/// Whether `label` is the configured `base` label or one the broker made from it.
fn is_broker_label(label: &str, base: &str) -> bool {
    label == base
        || label
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with(ROTATED_LABEL_SEPARATOR))
}

/// The labels of the token's private keys the configuration covers: `key_label` itself
/// (or the key whose `CKA_ID` is hex `key_label`) first, then the ones the broker
/// generated from it, oldest first (their labels sort by creation time).
fn broker_labels(session: &Session, config: &Pkcs11Config) -> Result<Vec<String>, Pkcs11Error> {
    let mut rotated = Vec::new();
    let all = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .map_err(call("C_FindObjects"))?;
    for key in all {
        // Another session (another process) may destroy a key meanwhile: skip it.
        let label = match attr_bytes(session, key, AttributeType::Label) {
            Ok(Some(label)) => label,
            Ok(None) => continue,
            Err(Pkcs11Error::Call {
                source: CkError::Pkcs11(RvError::ObjectHandleInvalid, _),
                ..
            }) => continue,
            Err(e) => return Err(e),
        };
        let Ok(label) = String::from_utf8(label) else {
            continue;
        };
        if label != config.key_label && is_broker_label(&label, &config.key_label) {
            rotated.push(label);
        }
    }
    rotated.sort();
    rotated.dedup();
    let mut labels = Vec::with_capacity(rotated.len() + 1);
    if !find_private_keys(session, &config.key_label)?.is_empty() {
        labels.push(config.key_label.clone());
    }
    labels.extend(rotated);
    Ok(labels)
}

/// A session on the configured token (read-write with `rw`), logged in.
fn logged_in_session(config: &Pkcs11Config, rw: bool) -> Result<(Session, String), Pkcs11Error> {
    let ctx = module(&config.module)?;
    let (slot, token) = find_slot(&ctx, config)?;
    let session = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(call("C_OpenSession"))?;
    login(&session, config, &token)?;
    Ok((session, token))
}

/// Every signing key of the configuration in the token, oldest first: the key labelled
/// `key_label` and the ones the broker generated from it when rotating
/// ([`generate_rotated`]). None at all is [`Pkcs11Error::KeyNotFound`].
pub fn token_keys(config: &Pkcs11Config) -> Result<Vec<Arc<dyn Signer>>, Pkcs11Error> {
    let (session, token) = logged_in_session(config, false)?;
    let labels = broker_labels(&session, config)?;
    if labels.is_empty() {
        return Err(Pkcs11Error::KeyNotFound {
            token,
            label: config.key_label.clone(),
        });
    }
    // Keep `session` (and its login) open until every signer has its own sessions.
    let mut keys: Vec<Arc<dyn Signer>> = Vec::with_capacity(labels.len());
    for label in labels {
        let one = Pkcs11Config {
            key_label: label,
            ..config.clone()
        };
        match open(&one) {
            Ok(k) => keys.push(k),
            // Destroyed since it was listed.
            Err(Pkcs11Error::KeyNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    drop(session);
    Ok(keys)
}

/// Generates a successor key of `alg` in the token for a rotation, labelled
/// `<key_label>@<created_unix>.<random>` so that [`token_keys`] finds it after a restart.
pub fn generate_rotated(
    config: &Pkcs11Config,
    alg: SigningAlgorithm,
    created_unix: u64,
) -> Result<Arc<dyn Signer>, Pkcs11Error> {
    let mut suffix = [0u8; 4];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| Pkcs11Error::Module {
            path: config.module.clone(),
            reason: "random number generator failed".into(),
        })?;
    let hex = crate::hex::to_hex(&suffix);
    let one = Pkcs11Config {
        key_label: format!(
            "{}{ROTATED_LABEL_SEPARATOR}{created_unix:012}.{hex}",
            config.key_label
        ),
        ..config.clone()
    };
    Ok(Arc::new(generate_in_token(&one, alg)?))
}

/// Destroys the key pair whose `kid` is `kid` among the configuration's keys in the token
/// (its private and public objects). Returns whether one was found. A destroyed key can
/// sign nothing again, in this process or any other.
pub fn destroy_in_token(config: &Pkcs11Config, kid: &str) -> Result<bool, Pkcs11Error> {
    let (session, _) = logged_in_session(config, true)?;
    let mut found = false;
    for label in broker_labels(&session, config)? {
        for key in find_private_keys(&session, &label)? {
            let Ok((alg, public)) = public_key(&session, key, &label) else {
                continue;
            };
            if jwk_for(alg, &public).kid != kid {
                continue;
            }
            found = true;
            let mut objects = vec![key];
            if let Some(id) =
                attr_bytes(&session, key, AttributeType::Id)?.filter(|i| !i.is_empty())
            {
                objects.extend(
                    session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PUBLIC_KEY),
                            Attribute::Id(id),
                        ])
                        .map_err(call("C_FindObjects"))?,
                );
            }
            for obj in objects {
                session
                    .destroy_object(obj)
                    .map_err(call("C_DestroyObject"))?;
            }
            tracing::info!(%kid, %label, "destroyed a key in the PKCS#11 token");
        }
    }
    Ok(found)
}

/// Creates a non-extractable key pair of `alg` in the token (`CKA_SENSITIVE` true,
/// `CKA_EXTRACTABLE` false, a random 16-byte `CKA_ID` shared by both halves, labelled
/// `key_label`), then opens it. A key with that label already there is an error.
pub fn generate_in_token(
    config: &Pkcs11Config,
    alg: SigningAlgorithm,
) -> Result<Pkcs11Signer, Pkcs11Error> {
    let ctx = module(&config.module)?;
    let (slot, token) = find_slot(&ctx, config)?;
    require_mechanism(&ctx, slot, &token, alg)?;
    let session = ctx.open_rw_session(slot).map_err(call("C_OpenSession"))?;
    login(&session, config, &token)?;
    if !find_private_keys(&session, &config.key_label)?.is_empty() {
        return Err(Pkcs11Error::KeyExists {
            token,
            label: config.key_label.clone(),
        });
    }
    let mut id = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| Pkcs11Error::Module {
            path: config.module.clone(),
            reason: "random number generator failed".into(),
        })?;
    let label = config.key_label.as_bytes().to_vec();
    let common = |params: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
            Attribute::EcParams(params.to_vec()),
        ]
    };
    let private = [
        Attribute::Token(true),
        Attribute::Label(label.clone()),
        Attribute::Id(id.clone()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    let generate = |mech: &Mechanism, params: &[u8]| {
        let mut public = common(params);
        public.extend([Attribute::Private(false), Attribute::Verify(true)]);
        session.generate_key_pair(mech, &public, &private)
    };
    match alg {
        SigningAlgorithm::ES256 => {
            generate(&Mechanism::EccKeyPairGen, P256_PARAMS).map_err(call("C_GenerateKeyPair"))?;
        }
        SigningAlgorithm::EdDSA => {
            // RFC 8410's OID first; older tokens (SoftHSM2 2.6) know only the curve name.
            match generate(&Mechanism::EccEdwardsKeyPairGen, ED25519_OID_PARAMS) {
                Ok(_) => {}
                Err(CkError::Pkcs11(
                    RvError::CurveNotSupported
                    | RvError::AttributeValueInvalid
                    | RvError::DomainParamsInvalid
                    | RvError::TemplateInconsistent,
                    _,
                )) => {
                    generate(&Mechanism::EccEdwardsKeyPairGen, ED25519_NAME_PARAMS)
                        .map_err(call("C_GenerateKeyPair"))?;
                }
                Err(e) => return Err(call("C_GenerateKeyPair")(e)),
            }
        }
    }
    // Keep `session` (and its login) open until the signer has its own sessions.
    let signer = Pkcs11Signer::open(config);
    drop(session);
    let signer = signer?;
    tracing::info!(kid = %signer.jwk.kid, alg = %alg, token = %signer.token, label = %config.key_label, "generated a key in the PKCS#11 token");
    Ok(signer)
}

impl Pkcs11Signer {
    /// Opens the key the configuration names; see [`open`].
    pub fn open(config: &Pkcs11Config) -> Result<Self, Pkcs11Error> {
        let ctx = module(&config.module)?;
        let (slot, token) = find_slot(&ctx, config)?;
        let session = ctx.open_ro_session(slot).map_err(call("C_OpenSession"))?;
        login(&session, config, &token)?;
        let keys = find_private_keys(&session, &config.key_label)?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                return Err(Pkcs11Error::KeyNotFound {
                    token,
                    label: config.key_label.clone(),
                });
            }
            more => {
                return Err(Pkcs11Error::KeyAmbiguous {
                    token,
                    label: config.key_label.clone(),
                    count: more.len(),
                });
            }
        };
        let (alg, public) = public_key(&session, key, &config.key_label)?;
        require_mechanism(&ctx, slot, &token, alg)?;
        warn_if_exportable(&session, key, &config.key_label);
        let max = match ctx
            .get_token_info(slot)
            .map_err(call("C_GetTokenInfo"))?
            .max_session_count()
        {
            // One session is the login session.
            Limit::Max(n) => usize::try_from(n.saturating_sub(1))
                .unwrap_or(MAX_SESSIONS)
                .clamp(1, MAX_SESSIONS),
            Limit::Unavailable | Limit::Infinite => MAX_SESSIONS,
        };
        let signer = Self {
            ctx,
            slot,
            token,
            config: config.clone(),
            key,
            alg,
            jwk: jwk_for(alg, &public),
            login_session: Mutex::new(session),
            pool: Pool {
                state: Mutex::new(PoolState::default()),
                returned: Condvar::new(),
                max,
            },
            _live: LiveSigner::counted(),
        };
        let probe = b"broker pkcs11 self-test";
        let sig = signer.try_sign(probe)?;
        let verifies = VerifyingKey::from_jwk(&signer.jwk).is_some_and(|vk| vk.verify(probe, &sig));
        if !verifies {
            return Err(Pkcs11Error::SelfTest(config.key_label.clone()));
        }
        tracing::info!(kid = %signer.jwk.kid, alg = %alg, token = %signer.token, label = %config.key_label, "PKCS#11 signing key opened");
        Ok(signer)
    }

    /// The label of the token holding the key.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    fn checkout(&self) -> Result<PooledSession<'_>, Pkcs11Error> {
        let mut st = lock(&self.pool.state);
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(PooledSession {
                    pool: &self.pool,
                    session: Some(s),
                    broken: false,
                });
            }
            if st.open < self.pool.max {
                st.open += 1;
                drop(st);
                // From here the guard accounts for the slot, whether or not the open works.
                let mut guard = PooledSession {
                    pool: &self.pool,
                    session: None,
                    broken: true,
                };
                let s = self
                    .ctx
                    .open_ro_session(self.slot)
                    .map_err(call("C_OpenSession"))?;
                guard.session = Some(s);
                guard.broken = false;
                return Ok(guard);
            }
            st = self
                .pool
                .returned
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn sign_once(&self, session: &Session, msg: &[u8]) -> Result<Vec<u8>, CkError> {
        match self.alg {
            SigningAlgorithm::ES256 => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
                session.sign(&Mechanism::Ecdsa, self.key, digest.as_ref())
            }
            SigningAlgorithm::EdDSA => session.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.key,
                msg,
            ),
        }
    }

    /// Signs through a pooled session. A session the token has closed is dropped and the
    /// signature tried once more on a fresh one; a forgotten login is renewed once.
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut retried = false;
        loop {
            let mut pooled = self.checkout()?;
            let Some(session) = pooled.get() else {
                return Err(Pkcs11Error::Call {
                    op: "C_Sign",
                    source: CkError::Pkcs11(RvError::SessionHandleInvalid, Function::Sign),
                });
            };
            match self.sign_once(session, msg) {
                Ok(sig) => {
                    // ES256 r || s and Ed25519 R || S are both 64 bytes.
                    let want = 64;
                    if sig.len() != want {
                        return Err(Pkcs11Error::UnsupportedKey {
                            label: self.config.key_label.clone(),
                            reason: format!(
                                "the token returned a {}-byte signature, not {want}",
                                sig.len()
                            ),
                        });
                    }
                    return Ok(sig);
                }
                Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) if !retried => {
                    retried = true;
                    drop(pooled);
                    let login_session = lock(&self.login_session);
                    login(&login_session, &self.config, &self.token)?;
                }
                Err(CkError::Pkcs11(
                    RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent,
                    _,
                )) if !retried => {
                    retried = true;
                    pooled.broken = true;
                }
                Err(e) => {
                    return Err(Pkcs11Error::Call {
                        op: "C_Sign",
                        source: e,
                    });
                }
            }
        }
    }
}

fn warn_if_exportable(session: &Session, key: ObjectHandle, label: &str) {
    let Ok(attrs) =
        session.get_attributes(key, &[AttributeType::Extractable, AttributeType::Sensitive])
    else {
        return;
    };
    for a in attrs {
        match a {
            Attribute::Extractable(true) => tracing::warn!(
                label,
                "PKCS#11 private key has CKA_EXTRACTABLE true: it can be wrapped out of the token"
            ),
            Attribute::Sensitive(false) => tracing::warn!(
                label,
                "PKCS#11 private key has CKA_SENSITIVE false: its value can be read from the token"
            ),
            _ => {}
        }
    }
}

impl Signer for Pkcs11Signer {
    fn kid(&self) -> &str {
        &self.jwk.kid
    }

    fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.try_sign(msg).map_err(|e| {
            tracing::error!(kid = %self.jwk.kid, token = %self.token, error = %e, "PKCS#11 signing failed");
            KeyError::Sign
        })
    }

    fn public_jwk(&self) -> PublicJwk {
        self.jwk.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn config_parses_and_refuses_unknown_fields() {
        let c: Pkcs11Config = toml::from_str(
            r#"module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "broker"
pin_file = "/etc/broker/hsm.pin"
key_label = "signing-1""#,
        )
        .unwrap();
        assert_eq!(c.slot, None);
        assert_eq!(c.token_label.as_deref(), Some("broker"));
        assert_eq!(c.key_label, "signing-1");
        let err = toml::from_str::<Pkcs11Config>(
            r#"module = "m"
pin_file = "p"
key_label = "k"
pin = "1234""#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn ec_points_in_both_encodings() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut der = vec![0x04, 65];
        der.extend(&point);
        assert_eq!(parse_ec_point(&der, 65), Some(point.clone()));
        assert_eq!(parse_ec_point(&point, 65), Some(point.clone()));
        assert_eq!(parse_ec_point(&point[..33], 65), None, "compressed");
        let ed = [9u8; 32];
        let mut der = vec![0x04, 32];
        der.extend(ed);
        assert_eq!(parse_ec_point(&der, 32), Some(ed.to_vec()));
        assert_eq!(parse_ec_point(&ed, 32), Some(ed.to_vec()));
        assert_eq!(hex_decode("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(hex_decode("signing-1"), None);
    }

    #[test]
    fn thumbprint_is_rfc7638() {
        // RFC 8037 Appendix A.3.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let jwk = jwk_for(SigningAlgorithm::EdDSA, &x);
        assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn pin_file_newline_is_dropped_and_empty_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        fs::write(&p, "1234\r\n").unwrap();
        assert_eq!(read_pin_bytes(&p).unwrap().as_slice(), b"1234");
        fs::write(&p, "\n").unwrap();
        assert!(matches!(read_pin(&p), Err(Pkcs11Error::PinFileEmpty(_))));
        let err = read_pin(&dir.path().join("none")).unwrap_err().to_string();
        assert!(err.contains("PIN file"), "{err}");
    }

    /// The SoftHSM2 library `.ci/run` installs (Debian's `softhsm2`).
    const SOFTHSM2: &str = "/usr/lib/softhsm/libsofthsm2.so";
    /// How many `in_token` tests the child process must pass.
    const IN_TOKEN_TESTS: usize = 12;

    fn softhsm2_module() -> PathBuf {
        std::env::var_os("BROKER_TEST_PKCS11_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SOFTHSM2))
    }

    fn softhsm2_util(conf: &Path, args: &[&str]) {
        let out = std::process::Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) once per process, and a test
    /// cannot set an environment variable without `unsafe`: this test makes a throw-away
    /// token directory with two tokens, then runs the `in_token` tests in a child process
    /// of this test binary pointed at it.
    #[test]
    fn softhsm2_tokens_sign_in_a_child_process() {
        let module = softhsm2_module();
        let util = std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output();
        let version = match util {
            Ok(out) if out.status.success() && module.exists() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            _ => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "softhsm2 is missing ({} or softhsm2-util): .ci/run installs the Debian package `softhsm2`",
                    module.display()
                );
                eprintln!(
                    "note: skipping the PKCS#11 tests: SoftHSM2 is not installed (apt-get install softhsm2)"
                );
                return;
            }
        };
        eprintln!("SoftHSM2 {version}");
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        for label in ["test", "second"] {
            softhsm2_util(
                &conf,
                &[
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    "1234",
                    "--so-pin",
                    "5678",
                ],
            );
        }
        fs::write(dir.path().join("pin"), "1234\n").unwrap();
        fs::write(dir.path().join("wrong-pin"), "0000\n").unwrap();
        // One test at a time: each test opens and drops its own PKCS#11 context, and with
        // four at once SoftHSM2's `C_GenerateKeyPair` failed with CKR_GENERAL_ERROR on a
        // loaded machine (every full `cargo test -p broker --lib` run, 2026-12-04; never
        // with one thread). A broker process holds one context for its life.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "mint::pkcs11::tests::in_token::",
                "--include-ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .env("BROKER_PKCS11_TEST_DIR", dir.path())
            .env("BROKER_TEST_PKCS11_MODULE", &module)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the in-token tests failed");
        let want = format!("test result: ok. {IN_TOKEN_TESTS} passed; 0 failed");
        assert!(stdout.contains(&want), "expected `{want}`");
    }

    /// Run only by [`softhsm2_tokens_sign_in_a_child_process`], with `SOFTHSM2_CONF` set.
    mod in_token {
        use std::collections::BTreeMap;

        use super::super::*;
        use super::softhsm2_module;

        /// The test directory, or `None` outside the child process.
        fn dir() -> Option<PathBuf> {
            let d = std::env::var_os("BROKER_PKCS11_TEST_DIR").map(PathBuf::from);
            if d.is_none() {
                eprintln!("note: run through softhsm2_tokens_sign_in_a_child_process");
            }
            d
        }

        fn config(dir: &Path, token: &str, pin: &str, key_label: &str) -> Pkcs11Config {
            Pkcs11Config {
                module: softhsm2_module(),
                slot: None,
                token_label: Some(token.to_owned()),
                pin_file: dir.join(pin),
                key_label: key_label.to_owned(),
            }
        }

        /// RFC 7638 by another road: serde_json of a sorted map of the required members.
        fn thumbprint_via_json(jwk: &PublicJwk) -> String {
            use base64::Engine as _;
            let mut m = BTreeMap::new();
            m.insert("crv", jwk.crv.clone().unwrap());
            m.insert("kty", jwk.kty.clone());
            m.insert("x", jwk.x.clone().unwrap());
            if let Some(y) = &jwk.y {
                m.insert("y", y.clone());
            }
            let json = serde_json::to_string(&m).unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                json.as_bytes(),
            ))
        }

        fn check_signs_and_verifies(signer: &dyn Signer, alg: SigningAlgorithm) {
            assert_eq!(signer.algorithm(), alg);
            let jwk = signer.public_jwk();
            assert_eq!(jwk.alg.as_deref(), Some(alg.as_str()));
            assert_eq!(jwk.use_.as_deref(), Some("sig"));
            assert_eq!(signer.kid(), jwk.kid);
            assert_eq!(
                jwk.kid,
                thumbprint_via_json(&jwk),
                "kid is the RFC 7638 thumbprint"
            );
            let vk = VerifyingKey::from_jwk(&jwk).expect("a supported JWK");
            let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
            let sig = signer.sign(msg).unwrap();
            assert_eq!(sig.len(), 64, "JOSE signature form");
            assert!(vk.verify(msg, &sig));
            assert!(!vk.verify(b"another message", &sig));
            // The JWK survives the JWKS's JSON.
            let back: PublicJwk =
                serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
            assert!(VerifyingKey::from_jwk(&back).unwrap().verify(msg, &sig));
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn es256_key_generated_opened_signs_and_verifies() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "es256-a");
            let made = generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
            let opened = open(&cfg).unwrap();
            assert_eq!(opened.kid(), made.kid(), "the same key, reopened");
            check_signs_and_verifies(opened.as_ref(), SigningAlgorithm::ES256);
            check_signs_and_verifies(&made, SigningAlgorithm::ES256);
            let debug = format!("{made:?}");
            assert!(
                debug.contains(made.kid()) && !debug.contains("1234"),
                "{debug}"
            );
            // ECDSA is randomized: two signatures differ and both verify.
            let a = opened.sign(b"m").unwrap();
            let b = opened.sign(b"m").unwrap();
            assert_ne!(a, b);
            // Found by CKA_ID (hex) too.
            let id = {
                let s = lock(&made.login_session);
                attr_bytes(&s, made.key, AttributeType::Id)
                    .unwrap()
                    .unwrap()
            };
            let hex = crate::hex::to_hex(&id);
            let by_id = open(&config(&dir, "test", "pin", &hex)).unwrap();
            assert_eq!(by_id.kid(), made.kid());
            // Generating over an existing label is refused.
            let err = generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap_err();
            assert!(matches!(err, Pkcs11Error::KeyExists { .. }), "{err}");
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn eddsa_key_generated_opened_signs_and_verifies() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "ed25519-a");
            let ctx = module(&cfg.module).unwrap();
            let (slot, _) = find_slot(&ctx, &cfg).unwrap();
            let mechs = ctx.get_mechanism_list(slot).unwrap();
            if !mechs.contains(&MechanismType::EDDSA) {
                let err = generate_in_token(&cfg, SigningAlgorithm::EdDSA).unwrap_err();
                assert!(err.to_string().contains("CKM_EDDSA"), "{err}");
                eprintln!("note: this SoftHSM2 has no CKM_EDDSA: EdDSA refused clearly");
                return;
            }
            let made = generate_in_token(&cfg, SigningAlgorithm::EdDSA).unwrap();
            let params = attr_bytes(
                &lock(&made.login_session),
                made.key,
                AttributeType::EcParams,
            )
            .unwrap()
            .unwrap();
            eprintln!(
                "Ed25519 CKA_EC_PARAMS: {}",
                if params == ED25519_OID_PARAMS {
                    "OID 1.3.101.112"
                } else {
                    "edwards25519"
                }
            );
            let opened = open(&cfg).unwrap();
            assert_eq!(opened.kid(), made.kid());
            check_signs_and_verifies(opened.as_ref(), SigningAlgorithm::EdDSA);
            // Ed25519 is deterministic.
            assert_eq!(opened.sign(b"m").unwrap(), opened.sign(b"m").unwrap());
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn private_key_is_sensitive_and_never_leaves_the_token() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "es256-sealed");
            let signer = generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
            let s = lock(&signer.login_session);
            let attrs = s
                .get_attributes(
                    signer.key,
                    &[
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Token,
                    ],
                )
                .unwrap();
            for want in [
                Attribute::Extractable(false),
                Attribute::Sensitive(true),
                Attribute::NeverExtractable(true),
                Attribute::AlwaysSensitive(true),
                Attribute::Token(true),
            ] {
                assert!(attrs.contains(&want), "{want:?} in {attrs:?}");
            }
            // CKA_VALUE (the private scalar) cannot be read.
            let info = s
                .get_attribute_info(signer.key, &[AttributeType::Value])
                .unwrap();
            assert!(
                matches!(
                    info.as_slice(),
                    [cryptoki::object::AttributeInfo::Sensitive]
                ),
                "{info:?}"
            );
            let value = s.get_attributes(signer.key, &[AttributeType::Value]);
            assert!(
                value.as_ref().map_or(true, |v| v.is_empty()),
                "CKA_VALUE came back: {:?}",
                value.map(|v| v.len())
            );
            drop(s);
            // Nor can it be made extractable (PKCS#11: CKA_EXTRACTABLE only goes to false).
            let rw = signer.ctx.open_rw_session(signer.slot).unwrap();
            let err = rw
                .update_attributes(signer.key, &[Attribute::Extractable(true)])
                .unwrap_err();
            eprintln!("setting CKA_EXTRACTABLE true: {err}");
            let again = rw
                .get_attributes(signer.key, &[AttributeType::Extractable])
                .unwrap();
            assert_eq!(again, vec![Attribute::Extractable(false)]);
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn modules_are_finalized_only_once_no_signer_is_left() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "es256-finalize");
            let signer = generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
            assert_eq!(finalize_unused(), 0, "a signer is alive");
            check_signs_and_verifies(&signer, SigningAlgorithm::ES256);
            let handle = module(&cfg.module).unwrap();
            assert!(handle.get_slots_with_initialized_token().is_ok());
            drop(signer);
            assert_eq!(finalize_unused(), 1, "the one module this process loaded");
            // Finalized for real: the module refuses a call on the old handle.
            let refused = handle.get_slots_with_initialized_token().unwrap_err();
            assert!(
                matches!(refused, CkError::Pkcs11(RvError::CryptokiNotInitialized, _)),
                "{refused}"
            );
            assert_eq!(finalize_unused(), 0, "nothing left to finalize");
            // A later signer initializes the module again and signs.
            let reopened = open(&cfg).unwrap();
            check_signs_and_verifies(reopened.as_ref(), SigningAlgorithm::ES256);
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn eight_threads_sign_at_once() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "es256-busy");
            let signer = Arc::new(generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap());
            let vk = VerifyingKey::from_jwk(&signer.public_jwk()).unwrap();
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let signer: Arc<dyn Signer> = signer.clone();
                    let vk = vk.clone();
                    std::thread::spawn(move || {
                        for i in 0..50 {
                            let msg = format!("thread {t} message {i}");
                            let sig = signer.sign(msg.as_bytes()).unwrap();
                            assert!(vk.verify(msg.as_bytes(), &sig), "{msg}");
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let open = lock(&signer.pool.state).open;
            eprintln!("8 threads signed through {open} sessions");
            assert!((1..=MAX_SESSIONS).contains(&open), "{open}");
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn wrong_pin_is_a_clear_error() {
            let Some(dir) = dir() else { return };
            // Token "second": nothing else in this process logs in to it (a login is
            // shared by the whole process, and would make any PIN "work").
            let cfg = config(&dir, "second", "wrong-pin", "any");
            let err = Pkcs11Signer::open(&cfg).unwrap_err();
            assert!(matches!(err, Pkcs11Error::PinIncorrect { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("PIN") && msg.contains("incorrect"), "{msg}");
            assert!(
                !msg.contains("0000"),
                "the PIN is never in a message: {msg}"
            );
            let err =
                Pkcs11Signer::open(&config(&dir, "second", "no-such-pin-file", "any")).unwrap_err();
            assert!(matches!(err, Pkcs11Error::PinFile { .. }), "{err}");
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn missing_key_label_is_a_clear_error() {
            let Some(dir) = dir() else { return };
            let err = Pkcs11Signer::open(&config(&dir, "test", "pin", "no-such-key")).unwrap_err();
            assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{err}");
            assert!(err.to_string().contains("no-such-key"), "{err}");
            let key_err = KeyError::from(err);
            assert!(key_err.to_string().contains("no-such-key"), "{key_err}");
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn unknown_token_and_missing_module_are_clear_errors() {
            let Some(dir) = dir() else { return };
            let err = Pkcs11Signer::open(&config(&dir, "nope", "pin", "k")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Pkcs11Error::Token { .. }), "{msg}");
            assert!(
                msg.contains("\"nope\"") && msg.contains("\"test\""),
                "{msg}"
            );
            // Two tokens and no label or slot: ambiguous.
            let mut cfg = config(&dir, "test", "pin", "k");
            cfg.token_label = None;
            let err = Pkcs11Signer::open(&cfg).unwrap_err().to_string();
            assert!(err.contains("more than one"), "{err}");
            cfg.module = dir.join("no-such-module.so");
            let err = Pkcs11Signer::open(&cfg).unwrap_err();
            assert!(matches!(err, Pkcs11Error::Module { .. }), "{err}");
        }

        #[test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        fn rotated_keys_are_found_by_their_label_and_destroyed() {
            let Some(dir) = dir() else { return };
            let cfg = config(&dir, "test", "pin", "rot-unit");
            let base = generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
            let r1 = generate_rotated(&cfg, SigningAlgorithm::ES256, 1_000).unwrap();
            let r2 = generate_rotated(&cfg, SigningAlgorithm::EdDSA, 2_000);
            // A key whose label merely starts with the base is not the broker's.
            generate_in_token(
                &config(&dir, "test", "pin", "rot-unitx"),
                SigningAlgorithm::ES256,
            )
            .unwrap();
            let kids = |c: &Pkcs11Config| -> Vec<String> {
                token_keys(c)
                    .unwrap()
                    .iter()
                    .map(|k| k.kid().to_owned())
                    .collect()
            };
            let mut want = vec![base.kid().to_owned(), r1.kid().to_owned()];
            if let Ok(r2) = &r2 {
                want.push(r2.kid().to_owned());
            }
            assert_eq!(kids(&cfg), want, "base first, then oldest first");
            assert!(destroy_in_token(&cfg, r1.kid()).unwrap());
            assert!(!destroy_in_token(&cfg, r1.kid()).unwrap(), "gone");
            want.remove(1);
            assert_eq!(kids(&cfg), want);
            // The base key destroyed: its label is free, its successors remain.
            assert!(destroy_in_token(&cfg, base.kid()).unwrap());
            want.remove(0);
            if want.is_empty() {
                assert!(matches!(
                    token_keys(&cfg),
                    Err(Pkcs11Error::KeyNotFound { .. })
                ));
            } else {
                assert_eq!(kids(&cfg), want);
            }
            generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
        }

        /// `[signing] pkcs11` for the in-process broker: a new ES256 key labelled
        /// `label` in the token `test`.
        fn in_process_line(dir: &Path, label: &str) -> (Pkcs11Config, String) {
            let cfg = config(dir, "test", "pin", label);
            generate_in_token(&cfg, SigningAlgorithm::ES256).unwrap();
            let line = format!(
                "pkcs11 = {{ module = {:?}, token_label = \"test\", pin_file = {:?}, key_label = {label:?} }}",
                cfg.module.display().to_string(),
                cfg.pin_file.display().to_string(),
            );
            (cfg, line)
        }

        fn token_kids(cfg: &Pkcs11Config) -> Vec<String> {
            token_keys(cfg)
                .unwrap()
                .iter()
                .map(|k| k.kid().to_owned())
                .collect()
        }

        /// The in-process scheduled rotation (`api::in_process_keys`) with the keys in
        /// the token: the successor is generated there, the retired key destroyed there,
        /// and no key file is ever written.
        #[tokio::test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        async fn a_scheduled_rotation_in_the_token_never_breaks_a_verifier() {
            use crate::api::in_process_keys::{T0, scheduled_rotation_cycle, start_in_token};
            let Some(dir) = dir() else { return };
            let (cfg, line) = in_process_line(&dir, "rot-cycle");
            let b = start_in_token(T0, &line).await;
            let (k1, k2) = scheduled_rotation_cycle(&b).await;
            assert_eq!(token_kids(&cfg), vec![k2], "k1 destroyed in the token");
            assert!(!token_kids(&cfg).contains(&k1));
            assert!(
                crate::mint::keys::key_files(&b.dir().join("keys"))
                    .unwrap()
                    .is_empty()
            );
        }

        #[tokio::test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        async fn a_restart_in_the_middle_of_a_rotation_in_the_token_resumes_it() {
            use crate::api::in_process_keys::{T0, restart_mid_rotation, start_in_token};
            let Some(dir) = dir() else { return };
            let (cfg, line) = in_process_line(&dir, "rot-restart");
            restart_mid_rotation(start_in_token(T0, &line).await).await;
            assert_eq!(token_kids(&cfg).len(), 2, "k1 retiring, k2 active");
        }

        #[tokio::test]
        #[ignore = "run by softhsm2_tokens_sign_in_a_child_process"]
        async fn an_emergency_revocation_destroys_the_key_in_the_token() {
            use crate::api::in_process_keys::{T0, emergency_revocation, start_in_token};
            let Some(dir) = dir() else { return };
            let (cfg, line) = in_process_line(&dir, "rot-revoke");
            let b = start_in_token(T0, &line).await;
            let k1 = emergency_revocation(&b).await;
            let left = token_kids(&cfg);
            assert!(!left.contains(&k1), "destroyed: {left:?}");
            assert_eq!(left.len(), 1, "its replacement, made in the token");
        }
    }
}
