//! Shared inputs of the benchmarks: real photos from `scripts/fetch-assets.sh`, synthetic
//! face embeddings, and small measuring helpers.

use std::path::PathBuf;

use image::imageops::FilterType;
use image::RgbImage;
use rollcall_models::device::DeviceChoice;
use rollcall_models::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};

pub use rollcall_models::fetched::{assets, model_dir};

/// The device the model benches run on: `ROLLCALL_DEVICE` (`cpu` when unset; `cuda` needs a
/// build with `--features cuda`).
pub fn bench_device() -> candle_core::Device {
    let choice = DeviceChoice::from_env(DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{e}"));
    choice
        .open()
        .unwrap_or_else(|e| panic!("ROLLCALL_DEVICE={choice}: {e}"))
}

/// A decoded photo.
pub fn load(path: PathBuf) -> RgbImage {
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", path.display()));
    decode_rgb(&bytes, DEFAULT_MAX_PIXELS).expect("a valid photo")
}

/// face-api's group photo `sampleN.jpg` resized to a 640×480 camera frame.
pub fn frame(n: usize) -> RgbImage {
    let img = load(model_dir().join(format!("demo/sample{n}.jpg")));
    image::imageops::resize(&img, 640, 480, FilterType::Triangle)
}

/// Synthetic face embeddings shaped like real ones: 128-D, L2-normalised, identities spread in
/// a cone (two different people score about 0.75, like dlib descriptors) along `identity_dims`
/// directions (face descriptors vary along a few dozen principal directions; 128 spreads them
/// over every direction, the hardest case for a graph index), and each identity's photos close
/// together (two photos of one person score about 0.93).
pub mod synthetic {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rollcall_server::index::StoredEmbedding;

    /// Dimension of the embeddings.
    pub const DIM: usize = 128;

    /// A gallery and queries drawn from it.
    pub struct Data {
        /// `faces` faces, `per_user` per identity, face ids from 1.
        pub gallery: Vec<StoredEmbedding>,
        /// New photos (noisy samples) of random enrolled identities.
        pub queries: Vec<Vec<f32>>,
    }

    fn normalise(v: &mut [f32]) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }

    struct Gauss(StdRng);

    impl Gauss {
        fn next(&mut self) -> f32 {
            let u: f32 = self.0.gen_range(1e-7..1.0);
            let v: f32 = self.0.gen();
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }

        fn vector(&mut self, scale: f32) -> Vec<f32> {
            let s = scale / (DIM as f32).sqrt();
            (0..DIM).map(|_| self.next() * s).collect()
        }
    }

    /// Identity directions of [`clustered`].
    pub const IDENTITY_DIMS: usize = 32;

    /// `faces` gallery faces (`per_user` per identity, identities along [`IDENTITY_DIMS`]
    /// directions) and `queries` queries, reproducibly.
    pub fn clustered(faces: usize, per_user: usize, queries: usize, seed: u64) -> Data {
        clustered_in(faces, per_user, queries, seed, IDENTITY_DIMS)
    }

    /// [`clustered`] with identities along `identity_dims` random directions.
    pub fn clustered_in(
        faces: usize,
        per_user: usize,
        queries: usize,
        seed: u64,
        identity_dims: usize,
    ) -> Data {
        let mut g = Gauss(StdRng::seed_from_u64(seed));
        let mut axis = g.vector(1.0);
        normalise(&mut axis);
        let basis: Vec<Vec<f32>> = (0..identity_dims.clamp(1, DIM))
            .map(|_| {
                let mut b = g.vector(1.0);
                normalise(&mut b);
                b
            })
            .collect();
        let users = faces.div_ceil(per_user);
        let centres: Vec<Vec<f32>> = (0..users)
            .map(|_| {
                let mut c: Vec<f32> = axis.iter().map(|a| a * 1.73).collect();
                let s = 1.0 / (basis.len() as f32).sqrt();
                for b in &basis {
                    let z = g.next() * s;
                    c.iter_mut().zip(b).for_each(|(c, b)| *c += z * b);
                }
                normalise(&mut c);
                c
            })
            .collect();
        let sample = |g: &mut Gauss, c: &[f32]| {
            let mut v: Vec<f32> = g.vector(0.27).iter().zip(c).map(|(w, c)| c + w).collect();
            normalise(&mut v);
            v
        };
        let gallery = (0..faces)
            .map(|i| StoredEmbedding {
                face_id: i as i64 + 1,
                user_id: (i / per_user) as i64 + 1,
                embedding: sample(&mut g, &centres[i / per_user]),
            })
            .collect();
        let queries = (0..queries)
            .map(|_| {
                let u = g.0.gen_range(0..users);
                sample(&mut g, &centres[u])
            })
            .collect();
        Data { gallery, queries }
    }
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The `p`-th percentile (0–100) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
