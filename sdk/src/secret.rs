//! Secrets: values a step may use that never become part of what rbuild
//! stores or shows.

use std::fmt;

use crate::wire::SecretDef;

/// A secret. Its value never reaches the cache index, a snapshot, a log or
/// progress output, and is scrubbed from step output; it is not part of
/// cache keys (its name is): a new value does not re-run a step.
#[derive(Clone)]
pub struct Secret {
    pub(crate) def: SecretDef,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.def.name)
    }
}
