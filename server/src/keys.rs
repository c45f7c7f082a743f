//! Signing keys: generation, storage in `keys/`, rotation, JWKS, and JWS
//! signing/verification. All JOSE work goes through `josekit`.
//!
//! `keys/keys.json` is the manifest (kid, alg, created, retired); each
//! private key is `keys/<kid>.pem` (PKCS#8, mode 0600). A retired key stays
//! in JWKS (verification only) until every JWT it signed has expired.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::{ES256, JwsHeader, JwsSigner, JwsVerifier, RS256};
use josekit::jwt::{self, JwtPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "keys.json";
const RSA_BITS: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    ES256,
    RS256,
}

impl SigningAlg {
    pub const ALL: [SigningAlg; 2] = [SigningAlg::ES256, SigningAlg::RS256];

    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::ES256 => "ES256",
            SigningAlg::RS256 => "RS256",
        }
    }

    pub fn parse(text: &str) -> Option<SigningAlg> {
        SigningAlg::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    pub kid: String,
    pub alg: SigningAlg,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` while the key is the active signer for its alg.
    pub retired_at: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    keys: Vec<KeyMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot access key directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key manifest {path} is unreadable: {message}")]
    Manifest { path: String, message: String },
    #[error("key {kid}: {message}")]
    Key { kid: String, message: String },
    #[error("no active {0} signing key: run `portcullis keys rotate`")]
    NoActiveKey(&'static str),
    #[error("cannot sign: {0}")]
    Sign(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("malformed JWT")]
    Malformed,
    #[error("algorithm not allowed here")]
    AlgorithmNotAllowed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("wrong token type")]
    WrongType,
    #[error("bad signature")]
    BadSignature,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn key_err(kid: &str) -> impl FnOnce(josekit::JoseError) -> KeyError + '_ {
    move |e| KeyError::Key {
        kid: kid.to_string(),
        message: e.to_string(),
    }
}

/// One loaded key.
pub struct SigningKey {
    pub meta: KeyMeta,
    public_jwk: Jwk,
    signer: Box<dyn JwsSigner>,
    verifier: Box<dyn JwsVerifier>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// RFC 7638 thumbprint of a public JWK: the `kid`.
fn thumbprint(jwk: &Jwk) -> String {
    let members: &[&str] = match jwk.key_type() {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        _ => &["kty"],
    };
    let canonical: BTreeMap<&str, serde_json::Value> = members
        .iter()
        .filter_map(|m| jwk.parameter(m).map(|v| (*m, v.clone())))
        .collect();
    let json = serde_json::to_string(&canonical).unwrap_or_default();
    crate::crypto::b64url(&Sha256::digest(json.as_bytes()))
}

fn load_key(dir: &Path, meta: &KeyMeta) -> Result<SigningKey, KeyError> {
    let path = dir.join(format!("{}.pem", meta.kid));
    let pem = std::fs::read(&path).map_err(io_err(&path))?;
    let kid = meta.kid.as_str();
    let (mut public_jwk, mut signer, verifier): (Jwk, Box<dyn JwsSigner>, Box<dyn JwsVerifier>) =
        match meta.alg {
            SigningAlg::ES256 => {
                let pair = ES256.key_pair_from_pem(&pem).map_err(key_err(kid))?;
                let public = pair.to_jwk_public_key();
                let signer = ES256.signer_from_pem(&pem).map_err(key_err(kid))?;
                let verifier = ES256.verifier_from_jwk(&public).map_err(key_err(kid))?;
                (public, Box::new(signer), Box::new(verifier))
            }
            SigningAlg::RS256 => {
                let pair = RS256.key_pair_from_pem(&pem).map_err(key_err(kid))?;
                let public = pair.to_jwk_public_key();
                let signer = RS256.signer_from_pem(&pem).map_err(key_err(kid))?;
                let verifier = RS256.verifier_from_jwk(&public).map_err(key_err(kid))?;
                (public, Box::new(signer), Box::new(verifier))
            }
        };
    if thumbprint(&public_jwk) != meta.kid {
        return Err(KeyError::Key {
            kid: meta.kid.clone(),
            message: "the key file does not match its kid (file replaced?)".to_string(),
        });
    }
    public_jwk.set_key_id(&meta.kid);
    public_jwk.set_algorithm(meta.alg.as_str());
    public_jwk.set_key_use("sig");
    let _ = &mut signer;
    Ok(SigningKey {
        meta: meta.clone(),
        public_jwk,
        signer,
        verifier,
    })
}

fn generate(dir: &Path, alg: SigningAlg, now: i64) -> Result<KeyMeta, KeyError> {
    let (pem, public) = match alg {
        SigningAlg::ES256 => {
            let pair = ES256.generate_key_pair().map_err(key_err("new ES256"))?;
            (pair.to_pem_private_key(), pair.to_jwk_public_key())
        }
        SigningAlg::RS256 => {
            let pair = RS256
                .generate_key_pair(RSA_BITS)
                .map_err(key_err("new RS256"))?;
            (pair.to_pem_private_key(), pair.to_jwk_public_key())
        }
    };
    let kid = thumbprint(&public);
    write_private(&dir.join(format!("{kid}.pem")), &pem)?;
    Ok(KeyMeta {
        kid,
        alg,
        created_at: now,
        retired_at: None,
    })
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    std::fs::write(path, data).map_err(io_err(path))
}

fn read_manifest(dir: &Path) -> Result<Manifest, KeyError> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a manifest.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), KeyError> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Loaded keys, immutable; replaced as a whole on reload.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    pub fn active(&self, alg: SigningAlg) -> Option<&SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.meta.alg == alg && k.meta.retired_at.is_none())
            .max_by_key(|k| k.meta.created_at)
    }

    /// Keys a JWT may still be verified with at `now`.
    fn published(&self, now: i64, retention: Duration) -> impl Iterator<Item = &SigningKey> {
        let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        self.keys.iter().filter(move |k| match k.meta.retired_at {
            None => true,
            Some(at) => at.saturating_add(keep) > now,
        })
    }

    /// The public JWKS document (current and recently retired keys).
    pub fn jwks(&self, now: i64, retention: Duration) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .published(now, retention)
            .map(|k| serde_json::Value::Object(k.public_jwk.as_ref().clone()))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn metas(&self) -> Vec<KeyMeta> {
        self.keys.iter().map(|k| k.meta.clone()).collect()
    }

    /// Signs `payload` with the active key for `alg`; `typ` goes in the header
    /// (`JWT`, `at+jwt`, `logout+jwt`, …) so no kind of token can pass as another.
    pub fn sign(
        &self,
        alg: SigningAlg,
        typ: &str,
        payload: &JwtPayload,
    ) -> Result<String, KeyError> {
        let key = self
            .active(alg)
            .ok_or(KeyError::NoActiveKey(alg.as_str()))?;
        let mut header = JwsHeader::new();
        header.set_token_type(typ);
        header.set_key_id(&key.meta.kid);
        jwt::encode_with_signer(payload, &header, key.signer.as_ref())
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies a JWT signed by one of our published keys (RFC 8725): the
    /// algorithm must be in `allowed` and match the key's own; the key is
    /// found only by `kid` in our set (`jku`, `x5u`, `jwk` headers are never
    /// followed); `typ` must equal `expected_typ`. Claims are the caller's job.
    pub fn verify(
        &self,
        token: &str,
        allowed: &[SigningAlg],
        expected_typ: &str,
        now: i64,
        retention: Duration,
    ) -> Result<JwtPayload, VerifyError> {
        if token.len() > 16 * 1024 || token.split('.').count() != 3 {
            return Err(VerifyError::Malformed);
        }
        let header = jwt::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let alg = header
            .claim("alg")
            .and_then(|v| v.as_str())
            .and_then(SigningAlg::parse)
            .ok_or(VerifyError::AlgorithmNotAllowed)?;
        if !allowed.contains(&alg) {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let typ = header.claim("typ").and_then(|v| v.as_str()).unwrap_or("");
        if !typ.eq_ignore_ascii_case(expected_typ) {
            return Err(VerifyError::WrongType);
        }
        let kid = header
            .claim("kid")
            .and_then(|v| v.as_str())
            .ok_or(VerifyError::UnknownKey)?;
        let key = self
            .published(now, retention)
            .find(|k| k.meta.kid == kid)
            .ok_or(VerifyError::UnknownKey)?;
        if key.meta.alg != alg {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let (payload, _) = jwt::decode_with_verifier(token, key.verifier.as_ref())
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(payload)
    }
}

/// What [`load_or_create`] did.
#[derive(Debug)]
pub struct LoadOutcome {
    pub set: KeySet,
    pub generated: Vec<KeyMeta>,
}

/// Loads the key set, generating an ES256 and an RS256 key for any algorithm
/// without an active key (first run).
pub fn load_or_create(dir: &Path, now: i64) -> Result<LoadOutcome, KeyError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut manifest = read_manifest(dir)?;
    let mut generated = Vec::new();
    for alg in SigningAlg::ALL {
        if !manifest
            .keys
            .iter()
            .any(|k| k.alg == alg && k.retired_at.is_none())
        {
            let meta = generate(dir, alg, now)?;
            manifest.keys.push(meta.clone());
            generated.push(meta);
        }
    }
    if !generated.is_empty() {
        write_manifest(dir, &manifest)?;
    }
    Ok(LoadOutcome {
        set: load_manifest_keys(dir, &manifest)?,
        generated,
    })
}

fn load_manifest_keys(dir: &Path, manifest: &Manifest) -> Result<KeySet, KeyError> {
    let keys = manifest
        .keys
        .iter()
        .map(|meta| load_key(dir, meta))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KeySet { keys })
}

/// Loads without generating (for `keys list`).
pub fn load(dir: &Path) -> Result<KeySet, KeyError> {
    load_manifest_keys(dir, &read_manifest(dir)?)
}

#[derive(Debug, Serialize)]
pub struct Rotation {
    pub new: Vec<KeyMeta>,
    pub retired: Vec<KeyMeta>,
}

/// Makes a new active key for each of `algs` and retires the previous one,
/// which stays published until its tokens have expired.
pub fn rotate(dir: &Path, algs: &[SigningAlg], now: i64) -> Result<Rotation, KeyError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut manifest = read_manifest(dir)?;
    let mut rotation = Rotation {
        new: Vec::new(),
        retired: Vec::new(),
    };
    for alg in algs {
        for meta in manifest
            .keys
            .iter_mut()
            .filter(|k| k.alg == *alg && k.retired_at.is_none())
        {
            meta.retired_at = Some(now);
            rotation.retired.push(meta.clone());
        }
        let meta = generate(dir, *alg, now)?;
        manifest.keys.push(meta.clone());
        rotation.new.push(meta);
    }
    write_manifest(dir, &manifest)?;
    Ok(rotation)
}

/// The server's live view of `keys/`: reloaded when the manifest changes, so
/// `portcullis keys rotate` takes effect without a restart.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    current: RwLock<(Arc<KeySet>, Option<SystemTime>)>,
}

impl KeyRing {
    pub fn new(dir: PathBuf, set: KeySet) -> Self {
        let mtime = manifest_mtime(&dir);
        KeyRing {
            dir,
            current: RwLock::new((Arc::new(set), mtime)),
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reloads if the manifest changed on disk; true when it did.
    pub fn reload_if_changed(&self) -> Result<bool, KeyError> {
        let mtime = manifest_mtime(&self.dir);
        let known = match self.current.read() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        };
        if mtime == known {
            return Ok(false);
        }
        let set = load(&self.dir)?;
        match self.current.write() {
            Ok(mut g) => *g = (Arc::new(set), mtime),
            Err(p) => *p.into_inner() = (Arc::new(set), mtime),
        }
        Ok(true)
    }
}

fn manifest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(MANIFEST))
        .and_then(|m| m.modified())
        .ok()
}
