//! The face index: nearest enrolled faces of a query embedding. Derived from the database (the
//! truth): built at boot from a snapshot, the Redis mirror or the database, then kept current by
//! the routes and by the events of other replicas.
//!
//! Two implementations of [`FaceIndex`]: [`ExactIndex`] (brute force, the reference) and
//! [`HnswIndex`] (approximate, for large galleries: a Hierarchical Navigable Small World
//! graph). [`Gallery`] is what the server holds: it picks one by gallery size and rebuilds
//! (switching kind, or compacting deleted HNSW entries) in the background without blocking
//! searches.

mod exact;
mod gallery;
mod graph;
mod hnsw;
pub mod snapshot;

pub use exact::ExactIndex;
pub use gallery::{Gallery, IndexPolicy};
pub use hnsw::{HnswIndex, HnswParams};

pub use crate::store::StoredEmbedding;

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

/// Operations every face index offers. Embeddings are L2-normalised; writes are idempotent
/// (applying the same event twice leaves the same index).
pub trait FaceIndex: Send + Sync {
    /// Adds a face, or replaces the face with this id.
    fn upsert(&self, face_id: i64, user_id: i64, embedding: &[f32]);
    /// Removes one face.
    fn remove_face(&self, face_id: i64);
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
    /// Every face as `(face_id, user_id)`.
    fn face_ids(&self) -> Vec<(i64, i64)>;
    /// Every face with its embedding (snapshots and rebuilds).
    fn entries(&self) -> Vec<StoredEmbedding>;
    /// `exact` or `hnsw`.
    fn kind(&self) -> &'static str;
    /// Fraction of stored entries that are deleted but still take space (0 when none).
    fn garbage_ratio(&self) -> f32 {
        0.0
    }
    /// Writes this index's part of a snapshot (see [`snapshot`]).
    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Dot product, in sixteen independent lanes so that it vectorises; on x86-64 CPUs with AVX2 and
/// FMA (checked at run time) a build for them runs.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `dot_fma` is compiled for.
        return unsafe { dot_fma(a, b) };
    }
    dot_with::<false>(a, b)
}

/// [`dot`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_with::<true>(a, b)
}

#[inline(always)]
fn dot_with<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            // Without the FMA feature `mul_add` would be a libm call.
            lanes[i] = if FMA {
                x[i].mul_add(y[i], lanes[i])
            } else {
                lanes[i] + x[i] * y[i]
            };
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Keeps the best hit per user from hits sorted most similar first, up to `k` users.
fn best_per_user(hits: impl IntoIterator<Item = Hit>, k: usize) -> Vec<Hit> {
    let mut out: Vec<Hit> = Vec::with_capacity(k);
    for h in hits {
        if out.len() == k {
            break;
        }
        if !out.iter().any(|o| o.user_id == h.user_id) {
            out.push(h);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testdata {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Normalises `v` in place.
    pub fn normalise(v: &mut [f32]) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }

    /// `(face_id, user_id, embedding)` of a synthetic gallery.
    pub type Faces = Vec<(i64, i64, Vec<f32>)>;

    /// `users` random identities of `faces` noisy faces each (128-D, normalised), and one new
    /// noisy query per identity: clustered like real face embeddings.
    pub fn clustered(users: usize, faces: usize, seed: u64) -> (Faces, Vec<Vec<f32>>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gauss = move || -> f32 {
            // Box-Muller.
            let (u, v): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        let mut gallery = Vec::new();
        let mut queries = Vec::new();
        for u in 0..users {
            let mut centre: Vec<f32> = (0..128).map(|_| gauss()).collect();
            normalise(&mut centre);
            let mut sample = || {
                let mut v: Vec<f32> = centre.iter().map(|c| c + 0.05 * gauss()).collect();
                normalise(&mut v);
                v
            };
            for f in 0..faces {
                gallery.push(((u * faces + f) as i64 + 1, u as i64 + 1, sample()));
            }
            queries.push(sample());
        }
        (gallery, queries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    /// Both implementations behave the same on the basic contract.
    fn contract(idx: &dyn FaceIndex) {
        let unit = |v: &[f32]| {
            let mut v = v.to_vec();
            v.resize(128, 0.0);
            testdata::normalise(&mut v);
            v
        };
        idx.upsert(1, 10, &unit(&[1.0, 0.0]));
        idx.upsert(2, 10, &unit(&[0.6, 0.8]));
        idx.upsert(3, 20, &unit(&[0.0, 1.0]));
        let hits = idx.search(&unit(&[0.5, 1.0]), 5);
        assert_eq!(
            hits.iter()
                .map(|h| (h.user_id, h.face_id))
                .collect::<Vec<_>>(),
            vec![(10, 2), (20, 3)],
            "{}: best face per user, most similar first",
            idx.kind()
        );
        // Upserting the same face again changes nothing.
        idx.upsert(3, 20, &unit(&[0.0, 1.0]));
        assert_eq!(idx.len(), 3);
        idx.remove_user(10);
        assert_eq!(idx.len(), 1);
        let hits = idx.search(&unit(&[1.0, 0.0]), 3);
        assert_eq!(
            hits.len(),
            1,
            "{}: a deleted user is never returned",
            idx.kind()
        );
        assert_eq!(hits[0].user_id, 20);
        idx.remove_face(3);
        assert!(idx.is_empty() && idx.search(&unit(&[0.0, 1.0]), 1).is_empty());
    }

    #[test]
    fn exact_and_hnsw_keep_the_contract() {
        contract(&ExactIndex::new());
        contract(&HnswIndex::new(HnswParams::default()));
    }
}
