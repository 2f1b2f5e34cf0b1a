//! Cache volumes: named directories that persist across runs and never
//! enter a cache key.

pub use crate::wire::Sharing;

/// A named cache volume (see [`Client::cache_volume`](crate::Client::cache_volume)).
#[derive(Clone, Debug)]
pub struct CacheVolume {
    pub(crate) name: String,
}
