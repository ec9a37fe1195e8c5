//! Approximate search with a Hierarchical Navigable Small World graph ([`super::graph`]). The
//! graph cannot delete, so removed faces are tombstoned: skipped in search results and dropped
//! when [`super::Gallery`] rebuilds the graph once tombstones pass a fraction of it.

use std::collections::HashMap;
use std::sync::RwLock;

use std::io::{self, Read, Write};

use super::graph::Graph;
use super::snapshot::{get, KIND_HNSW};
use super::{best_per_user, FaceIndex, Hit, StoredEmbedding};

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers (`M`; layer 0 keeps twice as many).
    pub max_connections: usize,
    /// Candidates explored while inserting.
    pub ef_construction: usize,
    /// Candidates explored while searching (raised to the number of results asked).
    pub ef_search: usize,
}

impl Default for HnswParams {
    /// Measured for recall@1 ≥ 0.99 at a million 128-D faces (see the README's Scale section).
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 128,
            ef_search: 64,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    face_id: i64,
    user_id: i64,
    alive: bool,
}

struct Inner {
    graph: Graph,
    /// Per graph node.
    slots: Vec<Slot>,
    /// Live node of each face.
    by_face: HashMap<i64, u32>,
    /// Live nodes of each user.
    by_user: HashMap<i64, Vec<u32>>,
    dead: usize,
}

impl Inner {
    fn kill(&mut self, node: u32) {
        let s = &mut self.slots[node as usize];
        if s.alive {
            s.alive = false;
            self.dead += 1;
            self.by_face.remove(&s.face_id);
            let user = s.user_id;
            if let Some(v) = self.by_user.get_mut(&user) {
                v.retain(|&x| x != node);
                if v.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
    }

    fn add(&mut self, face_id: i64, user_id: i64, embedding: &[f32]) {
        if self.graph.len() > 0 && embedding.len() != self.graph.dim() {
            tracing::warn!(face_id, "embedding of the wrong dimension ignored");
            return;
        }
        let node = self.graph.insert(embedding);
        self.register(node, face_id, user_id);
    }

    /// Records that graph node `node` (the next one) holds `face_id` of `user_id`.
    fn register(&mut self, node: u32, face_id: i64, user_id: i64) {
        self.slots.push(Slot {
            face_id,
            user_id,
            alive: true,
        });
        self.by_face.insert(face_id, node);
        self.by_user.entry(user_id).or_default().push(node);
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
        Self::with_capacity(params, 0)
    }

    fn with_capacity(params: HnswParams, capacity: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                graph: Graph::new(0, params.max_connections, params.ef_construction, capacity),
                slots: Vec::with_capacity(capacity),
                by_face: HashMap::with_capacity(capacity),
                by_user: HashMap::new(),
                dead: 0,
            }),
            params,
        }
    }

    /// An index holding `entries` (a face listed twice keeps its last embedding), its graph
    /// built on every core.
    pub fn build(entries: &[StoredEmbedding], params: HnswParams) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let idx = Self::with_capacity(params, entries.len());
        let mut last: HashMap<i64, usize> = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            last.insert(e.face_id, i);
        }
        let dim = entries.first().map_or(0, |e| e.embedding.len());
        let kept: Vec<&StoredEmbedding> = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| last[&e.face_id] == *i && e.embedding.len() == dim)
            .map(|(_, e)| e)
            .collect();
        if kept.len() < last.len() {
            tracing::warn!(
                ignored = last.len() - kept.len(),
                "embeddings of the wrong dimension ignored"
            );
        }
        {
            let mut g = idx.inner.write().unwrap_or_else(|e| e.into_inner());
            let vectors: Vec<&[f32]> = kept.iter().map(|e| e.embedding.as_slice()).collect();
            g.graph.extend(&vectors, threads);
            for (node, e) in kept.iter().enumerate() {
                g.register(node as u32, e.face_id, e.user_id);
            }
        }
        idx
    }

    /// Reads the part [`FaceIndex::write_snapshot`] wrote; searches use `params`' `ef_search`.
    pub(super) fn read_snapshot(r: &mut dyn Read, params: HnswParams) -> io::Result<Self> {
        let nodes = u64::from_le_bytes(get(r)?) as usize;
        let mut slots = Vec::with_capacity(nodes.min(1 << 28));
        for _ in 0..nodes {
            let face_id = i64::from_le_bytes(get(r)?);
            let user_id = i64::from_le_bytes(get(r)?);
            let alive = get::<1>(r)?[0] == 1;
            slots.push(Slot {
                face_id,
                user_id,
                alive,
            });
        }
        let graph = Graph::read(r)?;
        if graph.len() != nodes {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "node count"));
        }
        let mut inner = Inner {
            graph,
            slots: Vec::new(),
            by_face: HashMap::with_capacity(nodes),
            by_user: HashMap::new(),
            dead: 0,
        };
        for (node, s) in slots.iter().enumerate() {
            if s.alive {
                inner.by_face.insert(s.face_id, node as u32);
                inner
                    .by_user
                    .entry(s.user_id)
                    .or_default()
                    .push(node as u32);
            } else {
                inner.dead += 1;
            }
        }
        inner.slots = slots;
        let params = HnswParams {
            max_connections: inner.graph.m(),
            ef_construction: inner.graph.ef_construction(),
            ef_search: params.ef_search,
        };
        Ok(Self {
            inner: RwLock::new(inner),
            params,
        })
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
            if g.slots[old as usize].user_id == user_id && g.graph.vector(old) == embedding {
                return;
            }
            g.kill(old);
        }
        g.add(face_id, user_id, embedding);
    }

    fn remove_face(&self, face_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = g.by_face.get(&face_id).copied() {
            g.kill(node);
        }
    }

    fn remove_user(&self, user_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for node in g.by_user.get(&user_id).cloned().unwrap_or_default() {
            g.kill(node);
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if k == 0 || g.by_face.is_empty() {
            return Vec::new();
        }
        // Several faces per user, and tombstones among the neighbours: look at more faces
        // than users wanted, and widen until enough living users are found.
        let mut ef = self.params.ef_search.max(k * 4);
        loop {
            let found = g.graph.search(query, ef);
            let hits = best_per_user(
                found.iter().filter_map(|&(d, node)| {
                    let s = g.slots[node as usize];
                    s.alive.then_some(Hit {
                        face_id: s.face_id,
                        user_id: s.user_id,
                        similarity: 1.0 - d,
                    })
                }),
                k,
            );
            if hits.len() == k || found.len() < ef || ef >= g.slots.len() {
                return hits;
            }
            ef *= 4;
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
        g.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive)
            .map(|(node, s)| StoredEmbedding {
                face_id: s.face_id,
                user_id: s.user_id,
                embedding: g.graph.vector(node as u32).to_vec(),
            })
            .collect()
    }

    fn kind(&self) -> &'static str {
        "hnsw"
    }

    fn write_snapshot(&self, w: &mut dyn Write) -> io::Result<()> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        w.write_all(&[KIND_HNSW])?;
        w.write_all(&(g.slots.len() as u64).to_le_bytes())?;
        for s in &g.slots {
            w.write_all(&s.face_id.to_le_bytes())?;
            w.write_all(&s.user_id.to_le_bytes())?;
            w.write_all(&[u8::from(s.alive)])?;
        }
        g.graph.write(w)
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
        let (gallery, queries) = clustered(2000, 3, 1);
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
    fn build_keeps_the_last_embedding_of_a_face_listed_twice() {
        let (gallery, _) = clustered(20, 1, 4);
        let mut entries = embeddings(&gallery);
        entries.push(StoredEmbedding {
            face_id: 1,
            user_id: 1,
            embedding: gallery[7].2.clone(),
        });
        let hnsw = HnswIndex::build(&entries, HnswParams::default());
        assert_eq!(hnsw.len(), 20);
        assert_eq!(hnsw.garbage_ratio(), 0.0);
        let best = hnsw.search(&gallery[7].2, 2);
        assert!(best.iter().any(|h| h.face_id == 1 && h.similarity > 0.999));
        assert!(hnsw.search(&gallery[0].2, 1)[0].similarity < 0.99);
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
