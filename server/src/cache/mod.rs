//! What replicas share beyond the database: gallery events, attendance dedupe claims and recent
//! recognition results. [`RedisCache`] shares them through Redis (when `REDIS_URL` is set);
//! [`LocalCache`] serves the same roles in-process for a single replica. Neither is ever the
//! truth: when the cache cannot answer, callers fall back to the database.

mod local;
mod redis;

use std::time::Duration;

use futures_util::future::BoxFuture;

pub use self::local::LocalCache;
pub use self::redis::{RedisCache, RedisError, EVENTS_STREAM, FACES_MIRROR};

use crate::index::{FaceIndex, StoredEmbedding};

/// A change of the gallery, applied by every replica to its own index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEvent {
    /// A face was enrolled (or its user reactivated).
    Upsert(StoredEmbedding),
    /// A user was deleted or deactivated; these were their faces.
    RemoveUser {
        /// The user.
        user_id: i64,
        /// Their faces.
        face_ids: Vec<i64>,
    },
    /// Events may have been lost (Redis was unreachable): reconcile with the database.
    Resync,
}

impl IndexEvent {
    /// Applies the event to `index`; `false` for [`IndexEvent::Resync`], which needs the
    /// database.
    pub fn apply(&self, index: &dyn FaceIndex) -> bool {
        match self {
            IndexEvent::Upsert(e) => index.upsert(e.face_id, e.user_id, &e.embedding),
            IndexEvent::RemoveUser { user_id, .. } => index.remove_user(*user_id),
            IndexEvent::Resync => return false,
        }
        true
    }
}

/// What a dedupe claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No mark of the user within the window: the caller records one.
    First,
    /// The user has a mark within the window (its id, once recorded).
    Marked(Option<i64>),
    /// The cache cannot tell (Redis unreachable).
    Unknown,
}

/// Key of a recent recognition result: the face's perceptual hash and the threshold in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultKey {
    /// Perceptual hash of the face (see [`crate::phash`]).
    pub hash: u64,
    /// Bits of the match threshold the result was decided with.
    pub threshold_bits: u32,
}

/// A recent positive identification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachedResult {
    /// Who.
    pub user_id: i64,
    /// Their matching face.
    pub face_id: i64,
    /// Similarity of the match.
    pub similarity: f32,
}

/// Reachability of the cache's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// `redis` or `local`.
    pub backend: &'static str,
    /// Whether it answers.
    pub ok: bool,
}

/// The roles replicas share. Failures are absorbed (logged, reported by
/// [`SharedCache::health`]): the answer is then "don't know" and callers use the database.
pub trait SharedCache: Send + Sync {
    /// Reachability of the backend, checked now.
    fn health(&self) -> BoxFuture<'_, Health>;
    /// Publishes a gallery change to the other replicas (and the embedding mirror).
    fn publish(&self, event: IndexEvent) -> BoxFuture<'_, ()>;
    /// Claims the first attendance mark of `user_id` within `window`.
    fn claim_mark(&self, user_id: i64, window: Duration) -> BoxFuture<'_, Claim>;
    /// Remembers mark `mark_id` as the user's mark for `window` from now.
    fn set_mark(&self, user_id: i64, window: Duration, mark_id: i64) -> BoxFuture<'_, ()>;
    /// A recent result for this face, if any.
    fn recent_result(&self, key: ResultKey) -> BoxFuture<'_, Option<CachedResult>>;
    /// Remembers a result for `ttl`.
    fn remember_result(
        &self,
        key: ResultKey,
        result: CachedResult,
        ttl: Duration,
    ) -> BoxFuture<'_, ()>;
}
