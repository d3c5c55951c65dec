//! Keys: ML-DSA-65 key pairs, generated once and kept in two files each. The plan's decision
//! key signs decisions and chain heads; the executor's result key signs action results (ADR
//! 0019). A key of one kind is the same ML-DSA-65 key as the other: only the file names
//! differ, and what is signed says what it is, so a signature of one kind never passes for
//! another.
//!
//! Files hold the raw key bytes behind a one-line header (`mapek ML-DSA-65 secret key\n`), so
//! a key of another kind or a truncated file is refused with a clear error instead of
//! producing signatures nobody can check. The secret key file is written with mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use mapek_domain::{ActionResult, Decision};
use oqs::sig::{Algorithm, Sig};

use crate::AuditError;

const SECRET_HEADER: &[u8] = b"mapek ML-DSA-65 secret key\n";
const PUBLIC_HEADER: &[u8] = b"mapek ML-DSA-65 public key\n";

/// The file names [`generate`] writes in its directory.
pub const SECRET_FILE: &str = "decision.key";
/// The public half's file name.
pub const PUBLIC_FILE: &str = "decision.pub";
/// The executor's result key: the file names [`generate_for`] writes for [`Signs::Results`].
pub const RESULT_SECRET_FILE: &str = "result.key";
/// The public half of the result key.
pub const RESULT_PUBLIC_FILE: &str = "result.pub";

/// What a key pair signs, which names its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signs {
    /// Decisions and chain heads, by the plan workers and the witness: `decision.key`.
    Decisions,
    /// Action results, by the executors: `result.key`.
    Results,
}

impl Signs {
    /// The secret and public key files' names.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            Signs::Decisions => (SECRET_FILE, PUBLIC_FILE),
            Signs::Results => (RESULT_SECRET_FILE, RESULT_PUBLIC_FILE),
        }
    }
}

fn sig() -> Result<Sig, AuditError> {
    oqs::init();
    Sig::new(Algorithm::MlDsa65).map_err(|e| AuditError::Crypto(e.to_string()))
}

/// What a decision's signature signs: its chain hash, as text.
fn message(decision: &Decision) -> Vec<u8> {
    decision.chain_hash().into_bytes()
}

/// Signs decisions (held by the plan worker and the witness) or results (held by the
/// executor).
pub struct SigningKey {
    sig: Sig,
    secret: Vec<u8>,
}

/// Checks decisions' signatures (held by the executor and `mapek audit verify`) or results'
/// (held by `mapek audit verify`).
pub struct VerifyingKey {
    sig: Sig,
    public: Vec<u8>,
}

/// Generates a decision key pair into `dir` ([`SECRET_FILE`], [`PUBLIC_FILE`]).
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf), AuditError> {
    generate_for(dir, Signs::Decisions)
}

/// Generates a key pair for what `signs` into `dir`, refusing to overwrite an existing
/// secret key (a lost key makes the old signatures unverifiable only if the public key is
/// lost too, but an overwritten one is a silent rotation). Returns both paths.
pub fn generate_for(dir: &Path, signs: Signs) -> Result<(PathBuf, PathBuf), AuditError> {
    let (secret_file, public_file) = signs.files();
    let (secret_path, public_path) = (dir.join(secret_file), dir.join(public_file));
    if secret_path.exists() {
        return Err(AuditError::KeyFile {
            path: secret_path,
            detail: "exists already; remove it first to make a new key".into(),
        });
    }
    let sig = sig()?;
    let (public, secret) = sig
        .keypair()
        .map_err(|e| AuditError::Crypto(e.to_string()))?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| AuditError::KeyFile {
            path,
            detail: e.to_string(),
        }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&secret_path, &[SECRET_HEADER, secret.as_ref()].concat())
        .map_err(io(&secret_path))?;
    fs::write(&public_path, [PUBLIC_HEADER, public.as_ref()].concat()).map_err(io(&public_path))?;
    Ok((secret_path, public_path))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::write(path, bytes)
}

/// Reads a key file: its header must be `header` and its body `len` bytes.
fn read_key(path: &Path, header: &[u8], len: usize) -> Result<Vec<u8>, AuditError> {
    let bad = |detail: String| AuditError::KeyFile {
        path: path.to_owned(),
        detail,
    };
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    let Some(body) = bytes.strip_prefix(header) else {
        return Err(bad(format!(
            "is not a {}",
            String::from_utf8_lossy(header).trim()
        )));
    };
    if body.len() != len {
        return Err(bad(format!(
            "holds {} key bytes, an ML-DSA-65 key has {len}",
            body.len()
        )));
    }
    Ok(body.to_vec())
}

impl SigningKey {
    /// Reads the secret key file.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let sig = sig()?;
        let secret = read_key(path, SECRET_HEADER, sig.length_secret_key())?;
        Ok(Self { sig, secret })
    }

    /// Signs `decision` in place: its signature covers its chain hash (every field but the
    /// signature, its link to the previous decision included).
    pub fn sign(&self, decision: &mut Decision) -> Result<(), AuditError> {
        decision.signature = self.sign_bytes(&message(decision))?;
        Ok(())
    }

    /// Signs `result` in place: its signature covers [`crate::results::message`], its result
    /// hash (every field but the signature) behind a line that says it is a result.
    pub fn sign_result(&self, result: &mut ActionResult) -> Result<(), AuditError> {
        result.signature = self.sign_bytes(&crate::results::message(result))?;
        Ok(())
    }

    /// An ML-DSA-65 signature of `message`. What is signed must never read as another kind
    /// of signed thing: a decision's message is 64 hex digits, a chain head's starts with
    /// its own header line ([`crate::heads`]).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
        let key = self
            .sig
            .secret_key_from_bytes(&self.secret)
            .ok_or_else(|| AuditError::Crypto("the secret key has the wrong size".into()))?;
        let signature = self
            .sig
            .sign(message, key)
            .map_err(|e| AuditError::Crypto(e.to_string()))?;
        Ok(signature.into_vec())
    }
}

impl Clone for VerifyingKey {
    fn clone(&self) -> Self {
        Self {
            sig: sig().expect("ML-DSA-65 was available when this key was loaded"),
            public: self.public.clone(),
        }
    }
}

impl VerifyingKey {
    /// Reads the public key file.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let sig = sig()?;
        let public = read_key(path, PUBLIC_HEADER, sig.length_public_key())?;
        Ok(Self { sig, public })
    }

    /// Whether `decision`'s signature is a valid ML-DSA-65 signature of its chain hash by
    /// this key's owner.
    pub fn verifies(&self, decision: &Decision) -> bool {
        self.verifies_bytes(&message(decision), &decision.signature)
    }

    /// Whether `result`'s signature is a valid ML-DSA-65 signature of it, as it is, by this
    /// key's owner.
    pub fn verifies_result(&self, result: &ActionResult) -> bool {
        self.verifies_bytes(&crate::results::message(result), &result.signature)
    }

    /// Whether `signature` is this key's owner's ML-DSA-65 signature of `message`.
    pub(crate) fn verifies_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        let (Some(key), Some(signature)) = (
            self.sig.public_key_from_bytes(&self.public),
            self.sig.signature_from_bytes(signature),
        ) else {
            return false;
        };
        self.sig.verify(message, signature, key).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        mapek_testkit::samples::decision()
    }

    #[test]
    fn a_signed_decision_verifies_and_any_change_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate(dir.path()).unwrap();
        let (signer, checker) = (
            SigningKey::load(&secret).unwrap(),
            VerifyingKey::load(&public).unwrap(),
        );
        let mut d = decision();
        assert!(!checker.verifies(&d), "unsigned");
        signer.sign(&mut d).unwrap();
        assert_eq!(d.signature.len(), 3309);
        assert!(checker.verifies(&d));
        let mut changed = d.clone();
        changed.reason.push('!');
        assert!(!checker.verifies(&changed));

        let other = tempfile::tempdir().unwrap();
        let (_, other_public) = generate(other.path()).unwrap();
        assert!(!VerifyingKey::load(&other_public).unwrap().verifies(&d));
    }

    #[test]
    fn a_signed_result_verifies_and_never_passes_for_a_decision() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate_for(dir.path(), Signs::Results).unwrap();
        assert!(secret.ends_with(RESULT_SECRET_FILE) && public.ends_with(RESULT_PUBLIC_FILE));
        let (signer, checker) = (
            SigningKey::load(&secret).unwrap(),
            VerifyingKey::load(&public).unwrap(),
        );
        let mut r = mapek_testkit::samples::escalated_result();
        assert!(!checker.verifies_result(&r), "unsigned");
        signer.sign_result(&mut r).unwrap();
        assert!(checker.verifies_result(&r));
        let mut dropped = r.clone();
        dropped.escalation = None;
        assert!(!checker.verifies_result(&dropped));
        // The same key's signature of a result is no decision's signature, whatever the bytes.
        let mut d = decision();
        d.signature = r.signature.clone();
        assert!(!checker.verifies(&d));
    }

    #[test]
    fn a_key_is_never_overwritten_and_a_wrong_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate(dir.path()).unwrap();
        let again = generate(dir.path()).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        let wrong = SigningKey::load(&public).err().unwrap().to_string();
        assert!(
            wrong.contains("decision.pub") && wrong.contains("secret key"),
            "{wrong}"
        );
        fs::write(&secret, b"mapek ML-DSA-65 secret key\nshort").unwrap();
        let short = SigningKey::load(&secret).err().unwrap().to_string();
        assert!(short.contains("holds 5 key bytes"), "{short}");
    }
}
