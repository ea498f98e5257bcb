//! SMTP AUTH credentials: who may log in, and the check of a password.
//!
//! Users come from a passwd-file of `user:hash` lines, Dovecot's format (fields after the hash
//! are ignored; a `{SCHEME}` prefix is dropped), with the hash in crypt(3) form. Passwords are
//! checked by the system's crypt (libxcrypt: yescrypt, SHA-512/256-crypt, bcrypt and the older
//! ones), so any hash `mkpasswd`, `openssl passwd` or `/etc/shadow` holds works. A modern hash
//! costs milliseconds of CPU by design, which a shard must not spend: checks run on a small
//! pool of threads and the session awaits them.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use mxgate_core::pool::{Pool, Ticket};

#[link(name = "crypt")]
extern "C" {
    /// libxcrypt: hashes `phrase` with the method and salt of `setting` into `data` (a
    /// zeroed `struct crypt_data` of `size` bytes); NULL on failure.
    fn crypt_rn(
        phrase: *const c_char,
        setting: *const c_char,
        data: *mut c_void,
        size: c_int,
    ) -> *mut c_char;
}

/// `sizeof(struct crypt_data)` in libxcrypt.
const CRYPT_DATA_SIZE: usize = 32_768;

/// crypt(3) with a scratch area of the caller's; `None` when the setting is not a hash the
/// library knows (libxcrypt then returns NULL or a string starting with `*`).
fn crypt(scratch: &mut [u8], phrase: &str, setting: &str) -> Option<String> {
    let phrase = CString::new(phrase).ok()?;
    let setting = CString::new(setting).ok()?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `scratch` is a writable
    // area of CRYPT_DATA_SIZE bytes; the result points into `scratch` and is copied before
    // `scratch` is touched again.
    let out = unsafe {
        crypt_rn(
            phrase.as_ptr(),
            setting.as_ptr(),
            scratch.as_mut_ptr().cast(),
            CRYPT_DATA_SIZE as c_int,
        )
    };
    if out.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result is a NUL-terminated string inside `scratch`.
    let s = unsafe { CStr::from_ptr(out) }.to_str().ok()?.to_owned();
    (!s.starts_with('*')).then_some(s)
}

/// Whether `hash` is a whole crypt(3) hash the system knows: hashing anything with it as the
/// setting gives a string of its length and method and salt. (A plain word passes as a
/// traditional DES setting; the length tells it apart.)
fn well_formed(scratch: &mut [u8], hash: &str) -> bool {
    let setting_end = match hash.strip_prefix('$') {
        Some(_) => hash.rfind('$').unwrap_or(0),
        None => 2,
    };
    crypt(scratch, "", hash)
        .is_some_and(|h| h.len() == hash.len() && h.get(..setting_end) == hash.get(..setting_end))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The users who may log in, and their hashes.
#[derive(Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// A hash to spend the same time on when the user is unknown.
    decoy: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({})", self.hashes.len())
    }
}

impl Users {
    /// Reads a passwd-file; errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("smtp.auth_users_file {}", path.display()))?;
        Users::parse(&text, &path.display().to_string())
    }

    /// Parses passwd-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Users> {
        let mut users = Users::default();
        let mut scratch = vec![0u8; CRYPT_DATA_SIZE];
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{origin}:{}", n + 1);
            let Some((user, rest)) = line.split_once(':') else {
                bail!("{}: expected user:hash", at());
            };
            let hash = rest.split(':').next().unwrap_or("");
            let hash = match hash.strip_prefix('{') {
                Some(h) => match h.split_once('}') {
                    Some((scheme, _)) if scheme.eq_ignore_ascii_case("PLAIN") => {
                        bail!("{}: plain-text passwords are not accepted; store a crypt(3) hash (mkpasswd, openssl passwd -6)", at())
                    }
                    Some((_, h)) => h,
                    None => bail!("{}: unterminated {{SCHEME}} prefix", at()),
                },
                None => hash,
            };
            if user.is_empty() {
                bail!("{}: empty user name", at());
            }
            if !well_formed(&mut scratch, hash) {
                bail!(
                    "{}: user {user}: not a crypt(3) hash this system knows (e.g. $y$, $6$, $2b$)",
                    at()
                );
            }
            if users.decoy.is_empty() {
                users.decoy = hash.to_string();
            }
            if users
                .hashes
                .insert(user.to_string(), hash.to_string())
                .is_some()
            {
                bail!("{}: user {user} listed twice", at());
            }
        }
        Ok(users)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `user`'s. Unknown users cost as much time as known ones.
    pub fn check(&self, scratch: &mut [u8], user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok =
            crypt(scratch, password, hash).is_some_and(|h| same(h.as_bytes(), hash.as_bytes()));
        ok && known
    }
}

/// Password checks off the shards.
pub struct Verifier {
    pool: Pool<(String, String), bool>,
    users: usize,
}

impl Verifier {
    /// Loads the users and starts the checking threads.
    pub fn new(path: &Path) -> anyhow::Result<Verifier> {
        let users = Arc::new(Users::load(path)?);
        let n = users.len();
        let pool = Pool::new(
            "mxgate-auth",
            2,
            256,
            |_| vec![0u8; CRYPT_DATA_SIZE],
            move |scratch: &mut Vec<u8>, (user, password): (String, String)| {
                users.check(scratch, &user, &password)
            },
        )?;
        Ok(Verifier { pool, users: n })
    }

    /// How many users may log in.
    pub fn users(&self) -> usize {
        self.users
    }

    /// Queues a check; `None` when too many wait already.
    pub fn check(&self, user: &str, password: &str) -> Option<Ticket<bool>> {
        self.pool
            .submit((user.to_string(), password.to_string()))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes made by `openssl passwd -6 -salt saltsalt secret` and
    /// `openssl passwd -5 -salt saltsalt secret`.
    const SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const SHA256: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    /// bcrypt, made by Python's `crypt.crypt("secret", "$2b$05$abcdefghijklmnopqrstuu")`.
    const BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a";

    #[test]
    fn checks_crypt_hashes() {
        let text = format!(
            "# users\nalice:{SHA512}::::\n\nbob:{{SHA256-CRYPT}}{SHA256}\ncarol:{BCRYPT}\n"
        );
        let u = Users::parse(&text, "users").unwrap();
        assert_eq!(u.len(), 3);
        let mut scratch = vec![0u8; CRYPT_DATA_SIZE];
        assert!(u.check(&mut scratch, "alice", "secret"));
        assert!(!u.check(&mut scratch, "alice", "Secret"));
        assert!(u.check(&mut scratch, "bob", "secret"));
        assert!(u.check(&mut scratch, "carol", "secret"));
        assert!(!u.check(&mut scratch, "carol", "secret "));
        assert!(!u.check(&mut scratch, "dave", "secret"));
        assert!(!u.check(&mut scratch, "", ""));
    }

    #[test]
    fn bad_lines_named() {
        for (text, want) in [
            ("alice\n", "users:1: expected user:hash"),
            ("# x\nalice:{PLAIN}secret\n", "users:2: plain-text"),
            ("alice:secret\n", "users:1: user alice: not a crypt(3) hash"),
            (":$6$saltsalt$x\n", "users:1: empty user name"),
        ] {
            let e = Users::parse(text, "users").unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let twice = format!("alice:{SHA512}\nalice:{SHA256}\n");
        let e = Users::parse(&twice, "users").unwrap_err().to_string();
        assert!(e.contains("users:2: user alice listed twice"), "{e}");
    }
}
