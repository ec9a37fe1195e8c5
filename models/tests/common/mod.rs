//! Helpers shared by the integration tests of rollcall-models (and by the
//! `recognition_ablation` example): where the fetched assets lie, the golden fixtures, the
//! synthetic formula image, comparisons of outputs, photo loading and network weights.
//!
//! Each test binary uses a subset of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use rollcall_models::detection::{Detection, FaceBox};
use rollcall_models::dlib_weights::{load_dlib_resnet, DLIB_RESNET_FILE};
use rollcall_models::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};
use rollcall_models::layers::Precision;
use rollcall_models::preprocess::{to_batch_tensor, FloatImage};
use rollcall_models::tfjs::WeightMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The one-person photos of face_recognition's test images (the first three full-face).
pub const OBAMA: [&str; 5] = [
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
];

pub use rollcall_models::fetched::{assets, model_dir};

/// dlib's float32 ResNet weights file.
pub fn dlib_file() -> PathBuf {
    assets().join("dlib").join(DLIB_RESNET_FILE)
}

/// face-api's weights of `model` (e.g. `TinyFaceDetector::MODEL`) on the CPU, for the
/// configured precision.
pub fn face_api_weights(model: &str) -> WeightMap {
    WeightMap::load(&model_dir().join("model"), model, &Device::Cpu).unwrap()
}

/// The precisions a raw-output golden test runs in, each with its tolerance: the f32 one the
/// test was written for, and a looser one for 16-bit products, set for bf16's 8 significant
/// bits (fp16, with 11, meets it with more room; where the CPU has neither format that run is
/// f32 again and passes the tighter bound).
pub fn precisions(f32_tolerance: f32, half_tolerance: f32) -> [(Precision, f32); 2] {
    [
        (Precision::F32, f32_tolerance),
        (Precision::Half, half_tolerance),
    ]
}

/// dlib's float32 ResNet weights on the CPU, under face-api's tensor names.
pub fn dlib_weights() -> WeightMap {
    load_dlib_resnet(&dlib_file(), &Device::Cpu).unwrap()
}

/// The golden fixture `tests/fixtures/{dir}/{name}`, parsed from JSON.
pub fn fixture<T: DeserializeOwned>(dir: &str, name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// A fixture of face-api's own outputs (`tests/fixtures/faceapi`).
pub fn faceapi_fixture<T: DeserializeOwned>(name: &str) -> T {
    fixture("faceapi", name)
}

/// A fixture of dlib's own outputs (`tests/fixtures/dlib`).
pub fn dlib_fixture<T: DeserializeOwned>(name: &str) -> T {
    fixture("dlib", name)
}

/// A JSON array of numbers as `f32`s.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A JSON array of `[x, y]` points.
pub fn points(v: &Value) -> Vec<[f32; 2]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = floats(p);
            [p[0], p[1]]
        })
        .collect()
}

/// The synthetic `size`×`size` formula image `v(y, x, c) = (x*7 + y*13 + c*29) % 256` that the
/// golden fixtures were computed on.
pub fn formula_image(size: usize) -> FloatImage {
    let mut img = FloatImage::zeros(size, size);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                img.data[(y * size + x) * 3 + c] = ((x * 7 + y * 13 + c * 29) % 256) as f32;
            }
        }
    }
    img
}

/// The formula image as a `[1, 3, size, size]` network input.
pub fn formula_tensor(size: usize) -> Tensor {
    to_batch_tensor(&[formula_image(size)], &Device::Cpu).unwrap()
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The largest absolute difference of two tensors of one shape.
pub fn max_abs_diff_tensors(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// The largest absolute difference of two slices, over their common length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The detection of `found` that overlaps `want` most, with that IoU.
pub fn best_match<'a>(found: &'a [Detection], want: &FaceBox) -> (&'a Detection, f32) {
    let best = found
        .iter()
        .max_by(|a, b| a.bbox.iou(want).total_cmp(&b.bbox.iou(want)))
        .unwrap();
    (best, best.bbox.iou(want))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Euclidean distance of two vectors.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// An image file decoded to RGB, with a hint to fetch the assets when it is missing.
pub fn decode(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", path.display()));
    decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap()
}

/// One of face-api's group photos (`demo/sample1.jpg` .. `sample6.jpg`), decoded.
pub fn demo_photo_rgb(name: &str) -> RgbImage {
    decode(&model_dir().join("demo").join(name))
}

/// One of face-api's group photos as a float image.
pub fn demo_photo(name: &str) -> FloatImage {
    FloatImage::from_rgb(&demo_photo_rgb(name))
}

/// One of face_recognition's one-person test photos (`obama.jpg`, `biden.jpg`, ...), decoded.
pub fn person_photo_rgb(name: &str) -> RgbImage {
    decode(&assets().join("face_recognition/test_images").join(name))
}

/// One of face_recognition's one-person test photos as a float image.
pub fn person_photo(name: &str) -> FloatImage {
    FloatImage::from_rgb(&person_photo_rgb(name))
}
