//! dlib's float32 ResNet weights (`dlib_face_recognition_resnet_model_v1.dat`) through
//! `FaceRecognitionNet`, against dlib's own Python bindings (fixtures in `tests/fixtures/dlib/`).

use std::path::PathBuf;

use candle_core::Device;
use rollcall_models::dlib_weights::{load_dlib_resnet, DLIB_RESNET_FILE};
use rollcall_models::recognition::FaceRecognitionNet;
use rollcall_models::tfjs::WeightMap;
use rollcall_models::ModelError;
use serde_json::Value;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn model_dir() -> PathBuf {
    std::env::var_os("ROLLCALL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("face-api"))
}

fn dlib_file() -> PathBuf {
    assets().join("dlib").join(DLIB_RESNET_FILE)
}

fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// face-api's uint8 weights are a quantisation of dlib's: every dlib tensor has face-api's name
/// and shape, and lies within a few quantisation steps of it.
#[test]
fn dlib_weights_match_face_api_names_shapes_and_values() {
    let dlib = load_dlib_resnet(&dlib_file(), &Device::Cpu).unwrap();
    let dir = model_dir().join("model");
    let face_api = WeightMap::load(&dir, FaceRecognitionNet::MODEL, &Device::Cpu).unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("face_recognition_model-weights_manifest.json")).unwrap(),
    )
    .unwrap();
    let mut count = 0;
    for entry in manifest[0]["weights"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let ours = dlib.get(name, &shape).unwrap();
        let theirs = face_api.get(name, &shape).unwrap();
        let step = entry["quantization"]["scale"].as_f64().unwrap_or(0.0) as f32;
        let diff = max_abs(&(ours - &theirs).unwrap());
        let range = max_abs(&theirs);
        // Round-to-nearest quantisation: within half a step. face-api feeds `(x - mean) / 255`
        // where dlib feeds `/ 256`, so our first filters are dlib's times 255/256.
        let allowed = if name == "conv32_down/conv/filters" {
            0.5 * step + range / 255.0
        } else {
            0.5 * step * 1.01
        };
        assert!(
            diff <= allowed,
            "{name}: max|dlib - face-api| {diff:e} > {allowed:e}"
        );
        count += 1;
    }
    assert_eq!(count, dlib.len());
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rollcall-dlib-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn truncated_dlib_file_is_a_typed_error() {
    let bytes = std::fs::read(dlib_file()).unwrap();
    for cut in [0, 1, 7, 300, bytes.len() / 2, bytes.len() - 1] {
        let path = write_temp(&format!("cut{cut}"), &bytes[..cut]);
        let err = load_dlib_resnet(&path, &Device::Cpu).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        match err {
            ModelError::TruncatedWeights { offset, .. } => assert_eq!(offset, cut),
            other => panic!("cut at {cut}: expected TruncatedWeights, got {other}"),
        }
    }
}

#[test]
fn foreign_files_are_a_typed_error() {
    // Deterministic pseudo-random bytes, face-api's weight shard, and a JPEG.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let shard = std::fs::read(model_dir().join("model/face_recognition_model.bin")).unwrap();
    let jpeg = std::fs::read(assets().join("face_recognition/test_images/obama.jpg")).unwrap();
    let mut extra = std::fs::read(dlib_file()).unwrap();
    extra.extend_from_slice(b"trailing");
    for (name, bytes) in [
        ("random", &random),
        ("shard", &shard),
        ("jpeg", &jpeg),
        ("trailing", &extra),
    ] {
        let path = write_temp(name, bytes);
        let err = load_dlib_resnet(&path, &Device::Cpu).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, ModelError::ForeignWeights { .. }),
            "{name}: expected ForeignWeights, got {err}"
        );
    }
}
