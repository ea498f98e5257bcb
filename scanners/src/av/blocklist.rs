//! A second in-process engine: SHA-256 digests of known-bad files, as threat-intelligence feeds
//! publish them (one `HEX [NAME]` per line in `*.sha256` files; `#` starts a comment).
//!
//! Exact digests catch what a signature database has not learned yet (a campaign's attachment
//! seen an hour ago) and cost one hash per part. Archives are not opened: a digest names the
//! file as it travels.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{AvEngine, Outcome};

/// Known-bad SHA-256 digests and their names.
#[derive(Debug, Default)]
pub struct Blocklist {
    digests: HashMap<[u8; 32], String>,
}

/// A line of a digest file that is not a digest.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    /// The file.
    pub file: String,
    /// Its line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Blocklist {
    /// Parses digest lines; `file` names the source in errors and in default names.
    pub fn parse(text: &str, file: &str) -> Result<Blocklist, ParseError> {
        let mut b = Blocklist::default();
        b.add(text, file)?;
        Ok(b)
    }

    /// Loads every `*.sha256` file of a folder (none is fine).
    pub fn load_dir(dir: &Path) -> Result<Blocklist, ParseError> {
        let mut b = Blocklist::default();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(b);
        };
        let mut files: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sha256"))
            .collect();
        files.sort();
        for f in files {
            let name = f.display().to_string();
            let text = std::fs::read_to_string(&f).map_err(|e| ParseError {
                file: name.clone(),
                line: 0,
                message: e.to_string(),
            })?;
            b.add(&text, &name)?;
        }
        Ok(b)
    }

    fn add(&mut self, text: &str, file: &str) -> Result<(), ParseError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (hex, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let err = |m: &str| ParseError {
                file: file.to_owned(),
                line: i + 1,
                message: m.to_owned(),
            };
            let bytes = hex::decode(hex).map_err(|_| err("not a hexadecimal SHA-256 digest"))?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err("a SHA-256 digest has 64 hex digits"))?;
            let name = name.trim();
            let name = if name.is_empty() {
                format!("Blocklist.Sha256.{}", &hex[..16])
            } else {
                name.to_owned()
            };
            self.digests.insert(digest, name);
        }
        Ok(())
    }

    /// How many digests are listed.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

impl AvEngine for Blocklist {
    fn name(&self) -> &str {
        "sha256-blocklist"
    }

    fn scan(&self, data: &[u8], _name: Option<&str>) -> Outcome {
        if self.digests.is_empty() {
            return Outcome::Clean;
        }
        let d: [u8; 32] = Sha256::digest(data).into();
        match self.digests.get(&d) {
            Some(n) => Outcome::Virus(n.clone()),
            None => Outcome::Clean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_digests_are_found_and_bad_lines_named() {
        let digest = hex::encode(Sha256::digest(b"bad file"));
        let b = Blocklist::parse(&format!("# feed\n{digest} Campaign.X\n\n"), "f.sha256").unwrap();
        assert_eq!(
            b.scan(b"bad file", None),
            Outcome::Virus("Campaign.X".into())
        );
        assert_eq!(b.scan(b"good file", None), Outcome::Clean);
        let e = Blocklist::parse("abc\n", "g.sha256").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("g.sha256", 1));
    }
}
