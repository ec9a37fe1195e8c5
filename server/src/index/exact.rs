//! Exact search: every face compared with the query. Embeddings lie in one contiguous buffer so
//! the dot products stream through memory and vectorise; deletion swaps the last face in.

use std::collections::HashMap;
use std::sync::RwLock;

use std::io::{self, Read, Write};

use super::snapshot::{get, get_f32s, put_f32s, KIND_EXACT};
use super::{best_per_user, dot, FaceIndex, Hit, StoredEmbedding};

#[derive(Default)]
struct Inner {
    /// `(face_id, user_id)` per row.
    ids: Vec<(i64, i64)>,
    /// Row-major embeddings, `dim` floats per row.
    data: Vec<f32>,
    dim: usize,
    /// Row of each face.
    rows: HashMap<i64, usize>,
}

impl Inner {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn swap_remove(&mut self, i: usize) {
        let last = self.ids.len() - 1;
        let (face, _) = self.ids[i];
        self.rows.remove(&face);
        if i != last {
            self.ids[i] = self.ids[last];
            self.data
                .copy_within(last * self.dim..(last + 1) * self.dim, i * self.dim);
            self.rows.insert(self.ids[i].0, i);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
    }
}

/// Brute-force search over normalised embeddings.
#[derive(Default)]
pub struct ExactIndex {
    inner: RwLock<Inner>,
}

impl ExactIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index holding `entries`.
    pub fn build(entries: &[StoredEmbedding]) -> Self {
        let idx = Self::new();
        for e in entries {
            idx.upsert(e.face_id, e.user_id, &e.embedding);
        }
        idx
    }

    /// Reads the part [`FaceIndex::write_snapshot`] wrote.
    pub(super) fn read_snapshot(r: &mut dyn Read) -> io::Result<Self> {
        let dim = u32::from_le_bytes(get(r)?) as usize;
        let count = u64::from_le_bytes(get(r)?) as usize;
        if dim > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "dimension"));
        }
        let idx = Self::new();
        for _ in 0..count {
            let face = i64::from_le_bytes(get(r)?);
            let user = i64::from_le_bytes(get(r)?);
            idx.upsert(face, user, &get_f32s(r, dim)?);
        }
        Ok(idx)
    }
}

impl FaceIndex for ExactIndex {
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.ids.is_empty() {
            g.dim = embedding.len();
        }
        if embedding.len() != g.dim {
            tracing::warn!(face_id, "embedding of the wrong dimension ignored");
            return;
        }
        let dim = g.dim;
        match g.rows.get(&face_id).copied() {
            Some(i) => {
                g.ids[i] = (face_id, user_id);
                g.data[i * dim..(i + 1) * dim].copy_from_slice(embedding);
            }
            None => {
                let i = g.ids.len();
                g.ids.push((face_id, user_id));
                g.data.extend_from_slice(embedding);
                g.rows.insert(face_id, i);
            }
        }
    }

    fn remove_face(&self, face_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = g.rows.get(&face_id).copied() {
            g.swap_remove(i);
        }
    }

    fn remove_user(&self, user_id: i64) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut i = 0;
        while i < g.ids.len() {
            if g.ids[i].1 == user_id {
                g.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if k == 0 || g.ids.is_empty() || query.len() != g.dim {
            return Vec::new();
        }
        let hit = |i: usize, similarity: f32| Hit {
            face_id: g.ids[i].0,
            user_id: g.ids[i].1,
            similarity,
        };
        if k == 1 {
            let (i, s) = (0..g.ids.len())
                .map(|i| (i, dot(query, g.row(i))))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("not empty");
            return vec![hit(i, s)];
        }
        let mut scored: Vec<(usize, f32)> = (0..g.ids.len())
            .map(|i| (i, dot(query, g.row(i))))
            .collect();
        scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        best_per_user(scored.into_iter().map(|(i, s)| hit(i, s)), k)
    }

    fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }

    fn face_ids(&self) -> Vec<(i64, i64)> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .clone()
    }

    fn entries(&self) -> Vec<StoredEmbedding> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.ids
            .iter()
            .enumerate()
            .map(|(i, &(face_id, user_id))| StoredEmbedding {
                face_id,
                user_id,
                embedding: g.row(i).to_vec(),
            })
            .collect()
    }

    fn kind(&self) -> &'static str {
        "exact"
    }

    fn write_snapshot(&self, w: &mut dyn Write) -> io::Result<()> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        w.write_all(&[KIND_EXACT])?;
        w.write_all(&(g.dim as u32).to_le_bytes())?;
        w.write_all(&(g.ids.len() as u64).to_le_bytes())?;
        for (i, (face, user)) in g.ids.iter().enumerate() {
            w.write_all(&face.to_le_bytes())?;
            w.write_all(&user.to_le_bytes())?;
            put_f32s(w, g.row(i))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_remove_keeps_the_other_faces_findable() {
        let (gallery, queries) = crate::index::testdata::clustered(50, 3, 7);
        let idx = ExactIndex::new();
        for (f, u, v) in &gallery {
            idx.upsert(*f, *u, v);
        }
        for u in (1..=50).step_by(2) {
            idx.remove_user(u);
        }
        assert_eq!(idx.len(), 75);
        for (u, q) in queries.iter().enumerate() {
            let user = u as i64 + 1;
            let best = idx.search(q, 1)[0];
            if user % 2 == 0 {
                assert_eq!(best.user_id, user);
            } else {
                assert_ne!(best.user_id, user);
            }
        }
    }
}
