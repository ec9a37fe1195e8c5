//! The face index: nearest enrolled faces of a query embedding. Derived from the database
//! (rebuilt at boot); exact search here, the reference any approximate index is measured against.

use std::sync::RwLock;

/// A search hit: the best face of one user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The matching face.
    pub face_id: i64,
    /// Its owner.
    pub user_id: i64,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// Operations every face index offers.
pub trait FaceIndex: Send + Sync {
    /// Adds or replaces a face.
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]);
    /// Removes every face of a user.
    fn remove_user(&self, user_id: i64);
    /// The `k` best users (each with their best face), most similar first.
    fn search(&self, query: &[f32], k: usize) -> Vec<Hit>;
    /// Number of faces.
    fn len(&self) -> usize;
    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Entry {
    face_id: i64,
    user_id: i64,
    embedding: Vec<f32>,
}

/// Brute-force search over normalised embeddings (dot products).
#[derive(Default)]
pub struct ExactIndex {
    entries: RwLock<Vec<Entry>>,
}

impl ExactIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl FaceIndex for ExactIndex {
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.face_id != face_id);
        entries.push(Entry {
            face_id,
            user_id,
            embedding: embedding.to_vec(),
        });
    }

    fn remove_user(&self, user_id: i64) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| e.user_id != user_id);
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut best: Vec<Hit> = Vec::new();
        for e in entries.iter() {
            let similarity = dot(query, &e.embedding);
            match best.iter_mut().find(|h| h.user_id == e.user_id) {
                Some(h) if h.similarity < similarity => {
                    *h = Hit {
                        face_id: e.face_id,
                        user_id: e.user_id,
                        similarity,
                    }
                }
                Some(_) => {}
                None => best.push(Hit {
                    face_id: e.face_id,
                    user_id: e.user_id,
                    similarity,
                }),
            }
        }
        best.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        best.truncate(k);
        best
    }

    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn best_face_per_user_most_similar_first() {
        let idx = ExactIndex::new();
        idx.upsert(1, 10, &unit(&[1.0, 0.0]));
        idx.upsert(2, 10, &unit(&[0.6, 0.8]));
        idx.upsert(3, 20, &unit(&[0.0, 1.0]));
        let hits = idx.search(&unit(&[0.5, 1.0]), 5);
        assert_eq!(
            hits.iter()
                .map(|h| (h.user_id, h.face_id))
                .collect::<Vec<_>>(),
            vec![(10, 2), (20, 3)]
        );
        idx.remove_user(10);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.search(&unit(&[1.0, 0.0]), 1)[0].user_id, 20);
    }
}
