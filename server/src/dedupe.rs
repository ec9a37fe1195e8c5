//! Attendance marking with dedupe across replicas. The shared cache answers first (a Redis
//! `SET NX EX` key per user and window, or the in-process map): the first sighting in a window
//! records a mark, later ones fold into it with one cheap update. The database stays the last
//! guard: recording locks the user's row and folds into any mark within the window, so two
//! replicas that both believe they are first still make one mark.

use std::time::Duration;

use crate::cache::{Claim, SharedCache};
use crate::store::{Marked, Sighting, Store, StoreResult};

/// Records `sighting`: a new mark, or folded into the user's mark within `window` (0: every
/// sighting is its own mark).
pub async fn mark(
    store: &Store,
    cache: &dyn SharedCache,
    sighting: &Sighting,
    window: chrono::Duration,
) -> StoreResult<Marked> {
    let Ok(ttl) = window.to_std() else {
        return store.record_sighting(sighting, window).await;
    };
    if ttl < Duration::from_secs(1) {
        return store.record_sighting(sighting, window).await;
    }
    if let Claim::Marked(Some(id)) = cache.claim_mark(sighting.user_id, ttl).await {
        if let Some(marked) = store.fold_sighting(id, sighting, window).await? {
            cache.set_mark(sighting.user_id, ttl, id).await;
            return Ok(marked);
        }
    }
    let marked = store.record_sighting(sighting, window).await?;
    cache.set_mark(sighting.user_id, ttl, marked.id).await;
    Ok(marked)
}
