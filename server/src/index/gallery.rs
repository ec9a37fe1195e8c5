//! The server's index: exact below a gallery size, HNSW above it. Switching kind and compacting
//! tombstones both rebuild a new index on a background thread from a copy of the faces while the
//! current one keeps serving; writes made meanwhile are logged and replayed on the new index
//! before it is swapped in, so searches never wait for a rebuild.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{ExactIndex, FaceIndex, Hit, HnswIndex, HnswParams, StoredEmbedding};

/// When to use HNSW and when to compact it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexPolicy {
    /// Galleries of at least this many faces use HNSW; smaller ones exact search (which turns
    /// back below half of it).
    pub hnsw_threshold: usize,
    /// HNSW graph parameters.
    pub hnsw: HnswParams,
    /// Rebuild an HNSW graph when this fraction of its entries are tombstones.
    pub max_garbage: f32,
}

impl Default for IndexPolicy {
    fn default() -> Self {
        Self {
            hnsw_threshold: 20_000,
            hnsw: HnswParams::default(),
            max_garbage: 0.2,
        }
    }
}

impl IndexPolicy {
    /// The index kind this policy wants for `faces` faces, given the current kind.
    fn wants_hnsw(&self, faces: usize, current_is_hnsw: bool) -> bool {
        if current_is_hnsw {
            faces >= self.hnsw_threshold / 2
        } else {
            faces >= self.hnsw_threshold
        }
    }

    /// A fresh index of the kind this policy wants for `entries`.
    pub fn build(&self, entries: &[StoredEmbedding]) -> Arc<dyn FaceIndex> {
        if self.wants_hnsw(entries.len(), false) {
            Arc::new(HnswIndex::build(entries, self.hnsw))
        } else {
            Arc::new(ExactIndex::build(entries))
        }
    }
}

/// A write, kept to replay on an index being rebuilt.
enum Op {
    Upsert(i64, i64, Vec<f32>),
    RemoveFace(i64),
    RemoveUser(i64),
}

impl Op {
    fn apply(&self, idx: &dyn FaceIndex) {
        match self {
            Op::Upsert(f, u, v) => idx.upsert(*f, *u, v),
            Op::RemoveFace(f) => idx.remove_face(*f),
            Op::RemoveUser(u) => idx.remove_user(*u),
        }
    }
}

struct Shared {
    current: RwLock<Arc<dyn FaceIndex>>,
    /// `Some` while a rebuild runs: the writes it must replay.
    log: Mutex<Option<Vec<Op>>>,
    policy: IndexPolicy,
    /// Writes so far.
    generation: AtomicU64,
}

/// The face index the server holds; cheap to clone.
#[derive(Clone)]
pub struct Gallery {
    shared: Arc<Shared>,
}

impl Gallery {
    /// A gallery of `entries`, of the kind `policy` wants for their number.
    pub fn build(entries: &[StoredEmbedding], policy: IndexPolicy) -> Self {
        Self::with_index(policy.build(entries), policy)
    }

    /// A gallery serving `index` (a loaded snapshot); later rebuilds follow `policy`.
    pub fn with_index(index: Arc<dyn FaceIndex>, policy: IndexPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(index),
                log: Mutex::new(None),
                policy,
                generation: AtomicU64::new(0),
            }),
        }
    }

    fn current(&self) -> Arc<dyn FaceIndex> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Number of writes so far: unchanged means the index is unchanged.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Whether a background rebuild is running.
    pub fn rebuilding(&self) -> bool {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn write(&self, op: Op) {
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        op.apply(&*current);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        match log.as_mut() {
            Some(pending) => pending.push(op),
            None => {
                if needs_rebuild(&self.shared.policy, &*current) {
                    *log = Some(Vec::new());
                    let shared = self.shared.clone();
                    let spawned = std::thread::Builder::new()
                        .name("rollcall-index-rebuild".into())
                        .spawn(move || rebuild(&shared, current));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "could not start an index rebuild");
                        *log = None;
                    }
                }
            }
        }
    }
}

/// Whether `index` is not of the kind `policy` wants, or holds too many tombstones.
fn needs_rebuild(policy: &IndexPolicy, index: &dyn FaceIndex) -> bool {
    let is_hnsw = index.kind() == "hnsw";
    policy.wants_hnsw(index.len(), is_hnsw) != is_hnsw
        || (is_hnsw && index.garbage_ratio() > policy.max_garbage)
}

/// Builds the wanted index from `old`'s faces, replays the writes logged meanwhile, swaps it
/// in; again while the writes made meanwhile leave it needing a rebuild.
fn rebuild(shared: &Shared, mut old: Arc<dyn FaceIndex>) {
    loop {
        let started = Instant::now();
        let entries = old.entries();
        let fresh = shared.policy.build(&entries);
        drop(entries);
        let mut log = shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let pending = log.take().unwrap_or_default();
        for op in &pending {
            op.apply(&*fresh);
        }
        tracing::info!(
            kind = fresh.kind(),
            faces = fresh.len(),
            replayed = pending.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "face index rebuilt in the background"
        );
        *shared.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        if !needs_rebuild(&shared.policy, &*fresh) {
            return;
        }
        *log = Some(Vec::new());
        old = fresh;
    }
}

impl FaceIndex for Gallery {
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]) {
        self.write(Op::Upsert(face_id, user_id, embedding.to_vec()));
    }

    fn remove_face(&self, face_id: i64) {
        self.write(Op::RemoveFace(face_id));
    }

    fn remove_user(&self, user_id: i64) {
        self.write(Op::RemoveUser(user_id));
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        self.current().search(query, k)
    }

    fn len(&self) -> usize {
        self.current().len()
    }

    fn face_ids(&self) -> Vec<(i64, i64)> {
        self.current().face_ids()
    }

    fn entries(&self) -> Vec<StoredEmbedding> {
        self.current().entries()
    }

    fn kind(&self) -> &'static str {
        self.current().kind()
    }

    fn garbage_ratio(&self) -> f32 {
        self.current().garbage_ratio()
    }

    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.current().write_snapshot(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::testdata::clustered;

    fn wait(g: &Gallery) {
        while g.rebuilding() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn switches_kind_and_compacts_in_the_background_without_losing_writes() {
        let (gallery, queries) = clustered(120, 2, 5);
        let policy = IndexPolicy {
            hnsw_threshold: 100,
            ..IndexPolicy::default()
        };
        let g = Gallery::build(&[], policy);
        assert_eq!(g.kind(), "exact");
        for (f, u, v) in &gallery {
            g.upsert(*f, *u, v);
        }
        wait(&g);
        assert_eq!(
            g.kind(),
            "hnsw",
            "above the threshold the gallery turns to HNSW"
        );
        assert_eq!(g.len(), 240, "writes made during the rebuild were replayed");
        for (u, q) in queries.iter().enumerate() {
            assert_eq!(g.search(q, 1)[0].user_id, u as i64 + 1);
        }
        // Deleting 30% of the faces makes tombstones; the gallery compacts them away.
        for u in 1..=36 {
            g.remove_user(u);
        }
        wait(&g);
        assert_eq!(g.kind(), "hnsw");
        assert_eq!(g.len(), 168);
        assert!(
            g.garbage_ratio() < policy.max_garbage,
            "{}",
            g.garbage_ratio()
        );
        assert!(queries
            .iter()
            .all(|q| g.search(q, 3).iter().all(|h| h.user_id > 36)));
        // Below half the threshold it turns back to exact search.
        for u in 37..=100 {
            g.remove_user(u);
        }
        wait(&g);
        assert_eq!((g.kind(), g.len()), ("exact", 40));
    }
}
