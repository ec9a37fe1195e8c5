//! Shared inputs of the benchmarks: real photos from `scripts/fetch-assets.sh`.

use std::path::PathBuf;

use image::imageops::FilterType;
use image::RgbImage;
use rollcall_models::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};

/// The `assets/` folder (or `ROLLCALL_ASSETS_DIR`).
pub fn assets() -> PathBuf {
    std::env::var_os("ROLLCALL_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets"))
}

/// The folder holding face-api's `model/` and `demo/` (or `ROLLCALL_MODEL_DIR`).
pub fn model_dir() -> PathBuf {
    std::env::var_os("ROLLCALL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("face-api"))
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
