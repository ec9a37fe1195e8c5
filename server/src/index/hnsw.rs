//! Approximate search with a Hierarchical Navigable Small World graph (`hnsw_rs`). The graph
//! cannot delete, so removed faces are tombstoned: skipped in search results and dropped
//! when [`super::Gallery`] rebuilds the graph once tombstones pass a fraction of it.

use std::collections::HashMap;
use std::sync::RwLock;

use hnsw_rs::prelude::{Distance, Hnsw};

use super::{best_per_user, dot, FaceIndex, Hit, StoredEmbedding};

/// Cosine distance of L2-normalised vectors, `1 - a·b`, clamped at 0 (`hnsw_rs`'s own `DistDot`
/// asserts on the rounding of identical vectors).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node and layer (`M`).
    pub max_connections: usize,
    /// Candidates explored while inserting.
    pub ef_construction: usize,
    /// Candidates explored while searching (raised to the number of results asked).
    pub ef_search: usize,
}

impl Default for HnswParams {
    /// Measured for recall@1 ≥ 0.99 at a million 128-D faces (see the README's scale section).
    fn default() -> Self {
        Self {
            max_connections: 24,
            ef_construction: 200,
            ef_search: 96,
        }
    }
}

const MAX_LAYERS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    face_id: i64,
    user_id: i64,
    alive: bool,
}

struct Inner {
    graph: Hnsw<'static, f32, UnitCosine>,
    /// Per graph id (its insertion order).
    slots: Vec<Slot>,
    /// Live slot of each face.
    by_face: HashMap<i64, usize>,
    /// Live slots of each user.
    by_user: HashMap<i64, Vec<usize>>,
    dead: usize,
}

impl Inner {
    fn kill(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.alive {
            s.alive = false;
            self.dead += 1;
            self.by_face.remove(&s.face_id);
            let user = s.user_id;
            if let Some(v) = self.by_user.get_mut(&user) {
                v.retain(|&x| x != slot);
                if v.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
    }

    fn add(&mut self, face_id: i64, user_id: i64) -> usize {
        let slot = self.slots.len();
        self.slots.push(Slot {
            face_id,
            user_id,
            alive: true,
        });
        self.by_face.insert(face_id, slot);
        self.by_user.entry(user_id).or_default().push(slot);
        slot
    }
}

/// An HNSW graph over normalised embeddings, with tombstones for deleted faces.
pub struct HnswIndex {
    inner: RwLock<Inner>,
    params: HnswParams,
}

impl HnswIndex {
    /// An empty index.
    pub fn new(params: HnswParams) -> Self {
        Self::with_capacity(params, 1024)
    }

    fn with_capacity(params: HnswParams, capacity: usize) -> Self {
        let graph = Hnsw::new(
            params.max_connections,
            capacity.max(1024),
            MAX_LAYERS,
            params.ef_construction,
            UnitCosine,
        );
        Self {
            inner: RwLock::new(Inner {
                graph,
                slots: Vec::with_capacity(capacity),
                by_face: HashMap::with_capacity(capacity),
                by_user: HashMap::new(),
                dead: 0,
            }),
            params,
        }
    }

    /// An index holding `entries`, inserted in parallel (all cores).
    pub fn build(entries: &[StoredEmbedding], params: HnswParams) -> Self {
        let idx = Self::with_capacity(params, entries.len());
        {
            let mut g = idx.inner.write().unwrap_or_else(|e| e.into_inner());
            let mut batch: Vec<(&[f32], usize)> = Vec::with_capacity(entries.len());
            for e in entries {
                if let Some(old) = g.by_face.get(&e.face_id).copied() {
                    g.kill(old);
                }
                let slot = g.add(e.face_id, e.user_id);
                batch.push((e.embedding.as_slice(), slot));
            }
            g.graph.parallel_insert_slice(&batch);
        }
        idx
    }

    /// Changes the candidates explored per search (benchmarks sweep it on one graph).
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.params.ef_search = ef_search;
    }
}

impl FaceIndex for HnswIndex {
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = g.by_face.get(&face_id).copied() {
            if g.slots[old].user_id == user_id {
                // The query is the stored vector itself when nothing changed: the search
                // lands on it (a miss only costs a needless re-insert).
                let same = g
                    .graph
                    .search(embedding, 1, self.params.ef_search)
                    .first()
                    .is_some_and(|n| n.d_id == old && n.distance <= 1e-6);
                if same {
                    return;
                }
            }
            g.kill(old);
        }
        let slot = g.add(face_id, user_id);
        g.graph.insert_slice((embedding, slot));
    }

    fn remove_face(&self, face_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = g.by_face.get(&face_id).copied() {
            g.kill(slot);
        }
    }

    fn remove_user(&self, user_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for slot in g.by_user.get(&user_id).cloned().unwrap_or_default() {
            g.kill(slot);
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if k == 0 || g.by_face.is_empty() {
            return Vec::new();
        }
        // Several faces per user, and tombstones among the neighbours: ask for more faces
        // than users wanted, and widen until enough living users are found. (`hnsw_rs`'s
        // filtered search is not used: it walks the whole graph when the filter refuses.)
        let live = g.by_face.len();
        let mut fetch = (k * 4).max(8);
        loop {
            let ef = self.params.ef_search.max(fetch);
            let found = g.graph.search(query, fetch, ef);
            let hits = best_per_user(
                found.iter().filter_map(|n| {
                    let s = g.slots.get(n.d_id).filter(|s| s.alive)?;
                    Some(Hit {
                        face_id: s.face_id,
                        user_id: s.user_id,
                        similarity: 1.0 - n.distance,
                    })
                }),
                k,
            );
            if hits.len() == k || found.len() < fetch || fetch >= live + g.dead {
                return hits;
            }
            fetch *= 4;
        }
    }

    fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_face
            .len()
    }

    fn face_ids(&self) -> Vec<(i64, i64)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.slots
            .iter()
            .filter(|s| s.alive)
            .map(|s| (s.face_id, s.user_id))
            .collect()
    }

    fn entries(&self) -> Vec<StoredEmbedding> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.slots.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<StoredEmbedding> = g
            .graph
            .get_point_indexation()
            .into_iter()
            .filter_map(|p| {
                let s = g.slots.get(p.get_origin_id()).filter(|s| s.alive)?;
                Some(StoredEmbedding {
                    face_id: s.face_id,
                    user_id: s.user_id,
                    embedding: p.get_v().to_vec(),
                })
            })
            .collect();
        out.sort_unstable_by_key(|e| e.face_id);
        out
    }

    fn kind(&self) -> &'static str {
        "hnsw"
    }

    fn garbage_ratio(&self) -> f32 {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.slots.is_empty() {
            0.0
        } else {
            g.dead as f32 / g.slots.len() as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::testdata::clustered;
    use crate::index::ExactIndex;

    fn embeddings(gallery: &[(i64, i64, Vec<f32>)]) -> Vec<StoredEmbedding> {
        gallery
            .iter()
            .map(|(f, u, v)| StoredEmbedding {
                face_id: *f,
                user_id: *u,
                embedding: v.clone(),
            })
            .collect()
    }

    #[test]
    fn recall_against_exact_search_on_clustered_vectors() {
        let (gallery, queries) = clustered(800, 2, 1);
        let entries = embeddings(&gallery);
        let exact = ExactIndex::build(&entries);
        let hnsw = HnswIndex::build(&entries, HnswParams::default());
        assert_eq!(hnsw.len(), exact.len());
        let agree = queries
            .iter()
            .filter(|q| exact.search(q, 1)[0].face_id == hnsw.search(q, 1)[0].face_id)
            .count();
        let recall = agree as f32 / queries.len() as f32;
        assert!(recall >= 0.99, "recall@1 {recall}");
        // The top 5 users agree too, each named once.
        for q in queries.iter().take(50) {
            let e: Vec<i64> = exact.search(q, 5).iter().map(|h| h.user_id).collect();
            let h: Vec<i64> = hnsw.search(q, 5).iter().map(|h| h.user_id).collect();
            assert_eq!(e[0], h[0]);
            let mut unique = h.clone();
            unique.dedup();
            assert_eq!(unique.len(), h.len());
        }
    }

    #[test]
    fn deleted_faces_are_never_returned_and_count_as_garbage() {
        let (gallery, queries) = clustered(300, 2, 2);
        let hnsw = HnswIndex::build(&embeddings(&gallery), HnswParams::default());
        for u in 1..=150 {
            hnsw.remove_user(u);
        }
        assert_eq!(hnsw.len(), 300);
        assert!((hnsw.garbage_ratio() - 0.5).abs() < 1e-6);
        for q in &queries {
            for h in hnsw.search(q, 10) {
                assert!(h.user_id > 150, "deleted user {} returned", h.user_id);
            }
        }
        // A user's own query still finds them among the living.
        assert_eq!(hnsw.search(&queries[200], 1)[0].user_id, 201);
        // Entries export only the living, with their vectors.
        let entries = hnsw.entries();
        assert_eq!(entries.len(), 300);
        assert!(entries
            .iter()
            .all(|e| e.user_id > 150 && e.embedding.len() == 128));
    }

    #[test]
    fn upsert_replaces_a_face_and_the_same_upsert_is_a_no_op() {
        let (gallery, _) = clustered(10, 1, 3);
        let hnsw = HnswIndex::build(&embeddings(&gallery), HnswParams::default());
        hnsw.upsert(1, 1, &gallery[0].2);
        assert_eq!(
            hnsw.garbage_ratio(),
            0.0,
            "same face, same vector: nothing changes"
        );
        hnsw.upsert(1, 1, &gallery[5].2);
        assert_eq!(hnsw.len(), 10);
        assert!(hnsw.garbage_ratio() > 0.0);
        let best = hnsw.search(&gallery[5].2, 2);
        assert_eq!(best.len(), 2);
        assert!(best.iter().any(|h| h.face_id == 1));
    }
}
