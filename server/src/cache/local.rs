//! The in-process cache of a single replica: dedupe claims and recent results in bounded maps
//! with expiry. Gallery events need no publishing: the only index is this process's own.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::{ready, BoxFuture, FutureExt};

use super::{CachedResult, Claim, Health, IndexEvent, ResultKey, SharedCache};

/// A map whose entries expire, holding at most `capacity` of them: when full, expired entries
/// go first, then the ones closest to expiry.
struct ExpiringMap<K, V> {
    entries: HashMap<K, (Instant, V)>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> ExpiringMap<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((expires, v)) if *expires > now => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (expires, _)| *expires > now);
            if self.entries.len() >= self.capacity {
                let mut by_expiry: Vec<(Instant, K)> = self
                    .entries
                    .iter()
                    .map(|(k, (e, _))| (*e, k.clone()))
                    .collect();
                by_expiry.sort_unstable_by_key(|(e, _)| *e);
                for (_, k) in by_expiry.into_iter().take(self.capacity / 4 + 1) {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (now + ttl, value));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// In-process dedupe and result cache, for one replica without Redis.
pub struct LocalCache {
    marks: Mutex<ExpiringMap<(i64, u64), Option<i64>>>,
    results: Mutex<ExpiringMap<ResultKey, CachedResult>>,
}

impl LocalCache {
    /// A cache holding at most `capacity` results and `capacity` dedupe claims.
    pub fn new(capacity: usize) -> Self {
        Self {
            marks: Mutex::new(ExpiringMap::new(capacity)),
            results: Mutex::new(ExpiringMap::new(capacity)),
        }
    }

    /// Number of cached results (expired ones included until evicted).
    pub fn cached_results(&self) -> usize {
        self.results.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Default for LocalCache {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl SharedCache for LocalCache {
    fn health(&self) -> BoxFuture<'_, Health> {
        ready(Health {
            backend: "local",
            ok: true,
        })
        .boxed()
    }

    fn publish(&self, _event: IndexEvent) -> BoxFuture<'_, ()> {
        ready(()).boxed()
    }

    fn claim_mark(&self, user_id: i64, window: Duration) -> BoxFuture<'_, Claim> {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user_id, window.as_secs());
        let claim = match marks.get(&key, now) {
            Some(mark) => Claim::Marked(mark),
            None => {
                marks.insert(key, None, window, now);
                Claim::First
            }
        };
        ready(claim).boxed()
    }

    fn set_mark(&self, user_id: i64, window: Duration, mark_id: i64) -> BoxFuture<'_, ()> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (user_id, window.as_secs()),
            Some(mark_id),
            window,
            Instant::now(),
        );
        ready(()).boxed()
    }

    fn recent_result(&self, key: ResultKey) -> BoxFuture<'_, Option<CachedResult>> {
        let found = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now());
        ready(found).boxed()
    }

    fn remember_result(
        &self,
        key: ResultKey,
        result: CachedResult,
        ttl: Duration,
    ) -> BoxFuture<'_, ()> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, result, ttl, Instant::now());
        ready(()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: u64) -> ResultKey {
        ResultKey {
            hash,
            threshold_bits: 0.92f32.to_bits(),
        }
    }

    fn result(user_id: i64) -> CachedResult {
        CachedResult {
            user_id,
            face_id: user_id * 10,
            similarity: 0.97,
        }
    }

    #[tokio::test]
    async fn claims_fold_within_the_window_per_user_and_window() {
        let cache = LocalCache::default();
        let window = Duration::from_millis(80);
        assert_eq!(cache.claim_mark(1, window).await, Claim::First);
        assert_eq!(cache.claim_mark(1, window).await, Claim::Marked(None));
        assert_eq!(cache.claim_mark(2, window).await, Claim::First, "per user");
        cache.set_mark(1, window, 42).await;
        assert_eq!(cache.claim_mark(1, window).await, Claim::Marked(Some(42)));
        assert_eq!(
            cache.claim_mark(1, Duration::from_secs(60)).await,
            Claim::First,
            "a changed window starts afresh"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.claim_mark(1, window).await, Claim::First, "expired");
    }

    #[tokio::test]
    async fn results_expire_and_the_map_stays_bounded() {
        let cache = LocalCache::new(8);
        cache
            .remember_result(key(1), result(1), Duration::from_millis(50))
            .await;
        assert_eq!(cache.recent_result(key(1)).await, Some(result(1)));
        let other_threshold = ResultKey {
            threshold_bits: 0.5f32.to_bits(),
            ..key(1)
        };
        assert_eq!(cache.recent_result(other_threshold).await, None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(cache.recent_result(key(1)).await, None);
        for i in 0..100 {
            cache
                .remember_result(key(i), result(i as i64), Duration::from_secs(60))
                .await;
        }
        assert!(cache.cached_results() <= 8, "{}", cache.cached_results());
        assert_eq!(cache.recent_result(key(99)).await, Some(result(99)));
        assert!(cache.health().await.ok);
    }
}
