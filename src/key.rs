//! Cache keys (DESIGN.md invariant 1): blake3 over a step's operation, its
//! canonical arguments and the content digests of its inputs.
//!
//! The encoding is unambiguous (every field is named and length-prefixed),
//! so two different definitions cannot produce the same byte stream. Never
//! feed it an mtime, an inode or a host path.

use std::fmt;

/// Bumped when the meaning of a key changes, so old index rows stop matching.
const KEY_SCHEMA: &[u8] = b"rbuild-key-v2";

/// The identity of a step's result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for names and messages.
    pub fn short(self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

/// Builds a [`CacheKey`] from named fields.
pub struct KeyBuilder {
    hasher: blake3::Hasher,
}

impl KeyBuilder {
    /// Starts a key for operation `op` (e.g. `"exec"`).
    pub fn new(op: &str) -> KeyBuilder {
        let mut b = KeyBuilder {
            hasher: blake3::Hasher::new(),
        };
        b.bytes(KEY_SCHEMA);
        b.field("op", op);
        b
    }

    fn bytes(&mut self, data: &[u8]) {
        self.hasher.update(&(data.len() as u64).to_le_bytes());
        self.hasher.update(data);
    }

    /// A named string field.
    pub fn field(&mut self, name: &str, value: &str) -> &mut Self {
        self.bytes(name.as_bytes());
        self.bytes(value.as_bytes());
        self
    }

    /// A named list; its length is part of the encoding, so `["a b"]` and
    /// `["a", "b"]` differ.
    pub fn list<S: AsRef<str>>(&mut self, name: &str, items: &[S]) -> &mut Self {
        self.bytes(name.as_bytes());
        self.hasher.update(&(items.len() as u64).to_le_bytes());
        for item in items {
            self.bytes(item.as_ref().as_bytes());
        }
        self
    }

    pub fn finish(&self) -> CacheKey {
        CacheKey(*self.hasher.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(args: &[&str], env: &[&str], input: &str) -> CacheKey {
        KeyBuilder::new("exec")
            .list("args", args)
            .list("env", env)
            .field("input", input)
            .finish()
    }

    #[test]
    fn same_definition_same_key() {
        assert_eq!(
            key(&["echo", "hi"], &["A=1"], "img"),
            key(&["echo", "hi"], &["A=1"], "img")
        );
    }

    #[test]
    fn every_part_of_the_definition_counts() {
        let base = key(&["echo", "hi"], &["A=1"], "img");
        assert_ne!(base, key(&["echo", "ho"], &["A=1"], "img"));
        assert_ne!(base, key(&["echo", "hi"], &["A=2"], "img"));
        assert_ne!(base, key(&["echo", "hi"], &["A=1"], "other"));
    }

    #[test]
    fn boundaries_are_unambiguous() {
        assert_ne!(key(&["a b"], &[], "x"), key(&["a", "b"], &[], "x"));
        assert_ne!(key(&["ab"], &[], "x"), key(&["a", "b"], &[], "x"));
        assert_ne!(key(&["a"], &["b"], "x"), key(&["a", "b"], &[], "x"));
    }

    #[test]
    fn hex_forms() {
        let k = key(&["x"], &[], "y");
        assert_eq!(k.to_hex().len(), 64);
        assert!(k.to_hex().starts_with(&k.short()));
        assert_eq!(k.short().len(), 12);
    }
}
