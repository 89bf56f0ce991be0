//! Who may join a cluster: the cluster secret (32 random bytes, shared by every node of one
//! cluster), join tokens that carry it, the key id that mDNS announces instead of it, and this
//! node's own Noise static key. Both keys live as files in the config dir, mode 0600; the first
//! `exo serve` (or `exo cluster token`) creates them.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SECRET_FILE: &str = "cluster-secret";
pub const NODE_KEY_FILE: &str = "node-key";
const TOKEN_PREFIX: &str = "exo1-";

pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is readable by other users (mode {mode:03o}); run `chmod 600 {path}`", path = .path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("not an exo join token ({0}); print one with `exo cluster token` on a node of the cluster")]
    BadToken(String),
    #[error("{path} is damaged: {detail}", path = .path.display())]
    BadFile { path: PathBuf, detail: String },
    #[error("the operating system gave no randomness: {0}")]
    Random(String),
}

/// Domain-separated SHA-256 of the secret: the key id, the PSK and the token checksum are
/// different functions of it, so publishing the key id reveals nothing usable.
fn derive(label: &[u8], secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"exo-rs ");
    h.update(label);
    h.update([0u8]);
    h.update(secret);
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Identifies a cluster without revealing its secret (announced by mDNS, sent before the
/// handshake so that a node of another cluster is refused with a clear message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl KeyId {
    pub fn parse(s: &str) -> Option<KeyId> {
        unhex(s).and_then(|b| b.try_into().ok()).map(KeyId)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl std::fmt::Debug for ClusterSecret {
    // never the secret itself in logs
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(key id {})", self.key_id())
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(b)
}

impl ClusterSecret {
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        random_bytes().map(ClusterSecret)
    }

    /// A fixed secret (tests: nodes given the same bytes are in one cluster).
    pub fn from_bytes(b: [u8; 32]) -> ClusterSecret {
        ClusterSecret(b)
    }

    pub fn key_id(&self) -> KeyId {
        KeyId(derive(b"key id", &self.0)[..8].try_into().expect("8 bytes"))
    }

    /// The Noise pre-shared key.
    pub fn psk(&self) -> [u8; 32] {
        derive(b"noise psk", &self.0)
    }

    /// `exo1-` + the secret + a 4-byte checksum, in hex: what `exo cluster token` prints.
    pub fn token(&self) -> String {
        format!("{TOKEN_PREFIX}{}{}", hex(&self.0), hex(&derive(b"token", &self.0)[..4]))
    }

    pub fn from_token(t: &str) -> Result<ClusterSecret, SecretError> {
        let body =
            t.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(|| SecretError::BadToken("no exo1- prefix".into()))?;
        if body.len() != 72 {
            return Err(SecretError::BadToken(format!("{} characters after the prefix, not 72", body.len())));
        }
        let b = unhex(body).ok_or_else(|| SecretError::BadToken("not hexadecimal".into()))?;
        let secret: [u8; 32] = b[..32].try_into().expect("32 bytes");
        if derive(b"token", &secret)[..4] != b[32..] {
            return Err(SecretError::BadToken("checksum mismatch: the token was mistyped or cut".into()));
        }
        Ok(ClusterSecret(secret))
    }
}

/// Everything the transport needs to authenticate this node: the cluster secret and this
/// node's X25519 static key pair.
#[derive(Clone)]
pub struct NodeKeys {
    pub secret: ClusterSecret,
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKeys(key id {}, node key {})", self.key_id(), self.fingerprint())
    }
}

/// What loading the keys did, for the user (created, joined, or a token that differs from the
/// saved secret).
#[derive(Debug)]
pub struct Loaded {
    pub keys: NodeKeys,
    pub notes: Vec<String>,
}

fn generate_static() -> Result<([u8; 32], [u8; 32]), SecretError> {
    let kp = snow::Builder::new(NOISE_PARAMS.parse().expect("valid pattern"))
        .generate_keypair()
        .map_err(|e| SecretError::Random(e.to_string()))?;
    Ok((kp.private.try_into().expect("32 bytes"), kp.public.try_into().expect("32 bytes")))
}

impl NodeKeys {
    /// A fresh static key kept in memory only (tests; nodes that must not touch the disk).
    pub fn ephemeral(secret: ClusterSecret) -> Result<NodeKeys, SecretError> {
        let (private, public) = generate_static()?;
        Ok(NodeKeys { secret, private, public })
    }

    pub fn key_id(&self) -> KeyId {
        self.secret.key_id()
    }

    /// First 8 bytes of this node's public key, in hex (shown in `/cluster`).
    pub fn fingerprint(&self) -> String {
        hex(&self.public[..8])
    }

    /// The keys in `dir`, created when missing. `join` (a token from `--join` or
    /// `EXO_CLUSTER_TOKEN`) takes precedence over the saved secret; it is saved when there is
    /// none, and never overwrites one.
    pub fn load_or_create(dir: &Path, join: Option<&str>) -> Result<Loaded, SecretError> {
        let mut notes = Vec::new();
        let joined = join.map(ClusterSecret::from_token).transpose()?;
        let secret_path = dir.join(SECRET_FILE);
        let saved = read_private(&secret_path)?;
        let secret = match (joined, saved) {
            (Some(j), Some(text)) => {
                let s = ClusterSecret::from_token(&text).map_err(|e| bad(&secret_path, e))?;
                if s != j {
                    notes.push(format!(
                        "joining cluster {} with the given token; the secret saved in {} (cluster {}) is left as it is (delete it to stay in the joined cluster)",
                        j.key_id(),
                        secret_path.display(),
                        s.key_id()
                    ));
                }
                j
            }
            (None, Some(text)) => ClusterSecret::from_token(&text).map_err(|e| bad(&secret_path, e))?,
            (j, None) => {
                let (fresh, created) = match j {
                    Some(j) => (j, false),
                    None => (ClusterSecret::generate()?, true),
                };
                // another process may create it at the same moment: whoever links first wins
                let text = write_new(dir, &secret_path, &fresh.token())?;
                let s = ClusterSecret::from_token(&text).map_err(|e| bad(&secret_path, e))?;
                if s == fresh {
                    notes.push(if created {
                        format!(
                            "created a new cluster (key id {}); its secret is in {}; other nodes join with the token `exo cluster token` prints",
                            s.key_id(),
                            secret_path.display()
                        )
                    } else {
                        format!("joined cluster {}; saved its secret in {}", s.key_id(), secret_path.display())
                    });
                }
                if created {
                    s
                } else {
                    fresh
                }
            }
        };
        let key_path = dir.join(NODE_KEY_FILE);
        let text = match read_private(&key_path)? {
            Some(t) => t,
            None => {
                let (private, public) = generate_static()?;
                write_new(dir, &key_path, &format!("{}\n{}\n", hex(&private), hex(&public)))?
            }
        };
        let mut lines = text.lines().map(|l| unhex(l.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()));
        match (lines.next().flatten(), lines.next().flatten()) {
            (Some(private), Some(public)) => Ok(Loaded { keys: NodeKeys { secret, private, public }, notes }),
            _ => Err(SecretError::BadFile {
                path: key_path,
                detail: "expected two lines of 64 hex digits (private and public key); delete it to make a new one"
                    .into(),
            }),
        }
    }
}

/// This machine's keys: the config dir's, with `join` or else `EXO_CLUSTER_TOKEN` taking
/// precedence over the saved secret.
pub fn for_this_machine(join: Option<&str>) -> Result<Loaded, SecretError> {
    let env = crate::config::cluster_token();
    NodeKeys::load_or_create(&crate::config::config_dir(), join.or(env.as_deref()))
}

fn bad(path: &Path, e: SecretError) -> SecretError {
    SecretError::BadFile { path: path.to_path_buf(), detail: e.to_string() }
}

/// Reads a key file, refusing one that others can read.
fn read_private(path: &Path) -> Result<Option<String>, SecretError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SecretError::Io { what: "read", path: path.into(), source }),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions { path: path.into(), mode });
        }
    }
    if meta.len() > 4096 {
        return Err(SecretError::BadFile {
            path: path.into(),
            detail: format!("{} bytes; a key file is tiny", meta.len()),
        });
    }
    std::fs::read_to_string(path).map(Some).map_err(|source| SecretError::Io {
        what: "read",
        path: path.into(),
        source,
    })
}

/// Writes `text` to `path` (mode 0600) unless it exists; returns what is in the file after.
fn write_new(dir: &Path, path: &Path, text: &str) -> Result<String, SecretError> {
    fn io<'a>(what: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> SecretError + 'a {
        move |source| SecretError::Io { what, path: p.to_path_buf(), source }
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(io("create", dir))?;
    // tempfile creates files with mode 0600
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("write to", dir))?;
    tmp.write_all(text.as_bytes()).and_then(|_| tmp.as_file().sync_all()).map_err(io("write to", dir))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(text.to_string()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_private(path)?.ok_or_else(|| bad(path, SecretError::BadToken("vanished".into())))
        }
        Err(e) => Err(SecretError::Io { what: "create", path: path.into(), source: e.error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip_and_damage_is_named() {
        let s = ClusterSecret::generate().unwrap();
        let t = s.token();
        assert_eq!(ClusterSecret::from_token(&t).unwrap(), s);
        assert_eq!(ClusterSecret::from_token(&format!("  {t}\n")).unwrap(), s);
        let mut typo = t.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let e = ClusterSecret::from_token(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(ClusterSecret::from_token(&t[..40]).unwrap_err().to_string().contains("72"));
        assert!(ClusterSecret::from_token("hello").unwrap_err().to_string().contains("prefix"));
        assert!(ClusterSecret::from_token("exo1-é").is_err());
        // the key id is public, the secret never shows in Debug
        assert!(!format!("{s:?}").contains(&t[5..20]));
        assert_eq!(KeyId::parse(&s.key_id().to_string()), Some(s.key_id()));
        assert_ne!(s.psk()[..8], s.key_id().0);
    }

    #[test]
    fn files_are_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cfg");
        let a = NodeKeys::load_or_create(&dir, None).unwrap();
        assert!(a.notes[0].contains("created a new cluster"), "{:?}", a.notes);
        for f in [SECRET_FILE, NODE_KEY_FILE] {
            assert_eq!(std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let b = NodeKeys::load_or_create(&dir, None).unwrap();
        assert!(b.notes.is_empty());
        assert_eq!((b.keys.key_id(), b.keys.private), (a.keys.key_id(), a.keys.private));
        // a token for another cluster wins for this run and leaves the file alone
        let other = ClusterSecret::generate().unwrap();
        let c = NodeKeys::load_or_create(&dir, Some(&other.token())).unwrap();
        assert_eq!(c.keys.key_id(), other.key_id());
        assert!(c.notes[0].contains("left as it is"), "{:?}", c.notes);
        assert_eq!(NodeKeys::load_or_create(&dir, None).unwrap().keys.key_id(), a.keys.key_id());
        // joining on a fresh machine saves the secret
        let fresh = d.path().join("fresh");
        let j = NodeKeys::load_or_create(&fresh, Some(&other.token())).unwrap();
        assert!(j.notes[0].contains("joined"), "{:?}", j.notes);
        assert_eq!(NodeKeys::load_or_create(&fresh, None).unwrap().keys.key_id(), other.key_id());
        // a readable-by-others secret is refused; a bad token is refused before anything
        std::fs::set_permissions(dir.join(SECRET_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeKeys::load_or_create(&dir, None).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(NodeKeys::load_or_create(&fresh, Some("exo1-zz")).is_err());
        std::fs::write(fresh.join(NODE_KEY_FILE), "nonsense").unwrap();
        std::fs::set_permissions(fresh.join(NODE_KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(NodeKeys::load_or_create(&fresh, None).unwrap_err().to_string().contains("damaged"));
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_secret() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let ids: Vec<KeyId> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || NodeKeys::load_or_create(&dir, None).unwrap().keys.key_id())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.iter().all(|k| *k == ids[0]), "{ids:?}");
    }
}
