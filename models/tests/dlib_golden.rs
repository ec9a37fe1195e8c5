//! dlib's float32 ResNet weights (`dlib_face_recognition_resnet_model_v1.dat`) through
//! `FaceRecognitionNet`, against dlib's own Python bindings (fixtures in `tests/fixtures/dlib/`).

use std::path::PathBuf;

use candle_core::Device;
use common::{
    assets, cosine, demo_photo, distance, dlib_file, dlib_fixture, dlib_weights, face_api_weights,
    floats, formula_image, max_abs, max_abs_diff, model_dir, person_photo, person_photo_rgb,
    points,
};
use rollcall_models::align::{dlib_chip, CHIP_SIZE};
use rollcall_models::dlib_weights::load_dlib_resnet;
use rollcall_models::layers::Precision;
use rollcall_models::pipeline::{similarity, FacePipeline, PipelineConfig, RecognitionWeights};
use rollcall_models::preprocess::{to_batch_tensor, FloatImage};
use rollcall_models::recognition::FaceRecognitionNet;
use rollcall_models::ModelError;
use serde_json::Value;

mod common;

/// face-api's uint8 weights are a quantisation of dlib's: every dlib tensor has face-api's name
/// and shape, and lies within a few quantisation steps of it.
#[test]
fn dlib_weights_match_face_api_names_shapes_and_values() {
    let dlib = dlib_weights();
    let face_api = face_api_weights(FaceRecognitionNet::MODEL);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(model_dir().join("model/face_recognition_model-weights_manifest.json"))
            .unwrap(),
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

fn dlib_net() -> FaceRecognitionNet {
    FaceRecognitionNet::load(&dlib_weights()).unwrap()
}

fn forward(net: &FaceRecognitionNet, inputs: &[FloatImage]) -> Vec<Vec<f32>> {
    let x = to_batch_tensor(inputs, &Device::Cpu).unwrap();
    net.forward(&x).unwrap().to_vec2().unwrap()
}

/// Network only, identical input: dlib's `compute_face_descriptor` of the synthetic chip.
#[test]
fn descriptor_of_formula_chip_matches_dlib() {
    let expected = floats(&dlib_fixture::<Value>("fixed.json")["recognition"]);
    let got = forward(
        &dlib_net(),
        &[formula_image(FaceRecognitionNet::INPUT_SIZE)],
    )
    .remove(0);
    let cos = cosine(&got, &expected);
    let diff = max_abs_diff(&got, &expected);
    println!("formula chip vs dlib: cosine {cos:.7}, max abs diff {diff:.2e}");
    assert!(cos >= 0.9999, "cosine {cos}");
    assert!(diff < 1e-3, "max abs diff {diff}");
}

/// The photos of the fixtures, with the faces dlib found in them.
fn photos() -> Vec<(String, FloatImage, Value)> {
    let people = [
        "obama",
        "obama2",
        "obama3",
        "obama_partial_face",
        "obama_partial_face2",
        "biden",
    ]
    .map(|stem| (stem.to_string(), person_photo(&format!("{stem}.jpg"))));
    let groups = (1..=6).map(|i| (format!("sample{i}"), demo_photo(&format!("sample{i}.jpg"))));
    people
        .into_iter()
        .chain(groups)
        .map(|(stem, img)| {
            let fx = dlib_fixture(&format!("{stem}.json"));
            (stem, img, fx)
        })
        .collect()
}

/// Our `dlib_chip` from dlib's own landmarks against dlib's `get_face_chip`, and the dlib
/// weights on our chip against dlib's descriptor (alignment + network end to end).
#[test]
fn chips_and_descriptors_from_dlib_landmarks_match_dlib() {
    let net = dlib_net();
    let (mut worst_cos, mut worst_dist, mut faces) = (1.0f32, 0.0f32, 0);
    for (stem, img, fx) in photos() {
        let decoded: f64 = img.data.iter().map(|&v| f64::from(v)).sum();
        let pixel_diff = (decoded - fx["pixel_sum"].as_f64().unwrap()) / img.data.len() as f64;
        let mut chips = Vec::new();
        let mut expected = Vec::new();
        for face in fx["faces"].as_array().unwrap() {
            let chip = dlib_chip(&img, &points(&face["landmarks"]));
            let sums = floats(&face["chip_sum"]);
            let mean_diff: Vec<f32> = (0..3)
                .map(|c| {
                    let ours: f32 = chip.data.iter().skip(c).step_by(3).sum();
                    (ours - sums[c]) / (CHIP_SIZE * CHIP_SIZE) as f32
                })
                .collect();
            let mut grid_diff = (0.0f32, 0.0f32);
            let grid = face["chip_grid"].as_array().unwrap();
            for (gy, row) in grid.iter().enumerate() {
                for (gx, px) in row.as_array().unwrap().iter().enumerate() {
                    let (x, y) = (9 + 18 * gx, 9 + 18 * gy);
                    for (c, v) in floats(px).iter().enumerate() {
                        let d = (chip.at(x, y, c) - v).abs();
                        grid_diff = (grid_diff.0 + d / 192.0, grid_diff.1.max(d));
                    }
                }
            }
            println!(
                "{stem}: decoded mean diff {pixel_diff:+.3}; chip mean diff per channel \
                 {mean_diff:+.2?}, 8x8 grid mean |diff| {:.2} max {:.0}",
                grid_diff.0, grid_diff.1
            );
            assert!(
                grid_diff.0 < 0.5 && grid_diff.1 <= 3.0,
                "{stem}: chip differs from dlib's"
            );
            chips.push(chip);
            expected.push(floats(&face["descriptor"]));
        }
        if chips.is_empty() {
            continue;
        }
        for (got, want) in forward(&net, &chips).iter().zip(&expected) {
            let (cos, dist) = (cosine(got, want), distance(got, want));
            println!("{stem}: descriptor vs dlib: cosine {cos:.5}, distance {dist:.4}");
            worst_cos = worst_cos.min(cos);
            worst_dist = worst_dist.max(dist);
            faces += 1;
        }
    }
    println!("{faces} faces: worst cosine {worst_cos:.5}, worst distance {worst_dist:.4}");
    assert!(faces >= 20);
    assert!(worst_cos >= 0.9999, "worst cosine {worst_cos}");
}

#[test]
fn batched_forward_equals_single_forwards() {
    let net = dlib_net();
    let inputs: Vec<FloatImage> = (0..3)
        .map(|k| {
            let mut img = formula_image(FaceRecognitionNet::INPUT_SIZE);
            img.data
                .iter_mut()
                .for_each(|v| *v = (*v + 40.0 * k as f32) % 256.0);
            img
        })
        .collect();
    let batched = forward(&net, &inputs);
    for (i, input) in inputs.iter().enumerate() {
        let single = forward(&net, std::slice::from_ref(input)).remove(0);
        let diff = max_abs_diff(&single, &batched[i]);
        assert!(diff < 1e-4, "item {i}: max abs diff {diff}");
    }
}

/// The pipeline finds dlib's weights beside the model dir and embeds like the face-api weights.
#[test]
fn pipeline_runs_with_either_recognition_weights() {
    let image = person_photo_rgb("obama.jpg");
    let mut embeddings = Vec::new();
    for weights in [RecognitionWeights::FaceApi, RecognitionWeights::Dlib] {
        let config = PipelineConfig {
            recognition_weights: weights,
            ..PipelineConfig::default()
        };
        let pipeline = FacePipeline::load(&model_dir(), &Device::Cpu, config).unwrap();
        let faces = pipeline
            .process(std::slice::from_ref(&image))
            .unwrap()
            .faces
            .remove(0);
        assert_eq!(faces.len(), 1);
        embeddings.push(faces[0].embedding.clone());
    }
    let sim = similarity(&embeddings[0], &embeddings[1]);
    println!("obama.jpg, face-api uint8 vs dlib f32 weights: cosine {sim:.5}");
    assert!(sim > 0.99, "cosine {sim}");
}

/// Saturated chips (all white, all black, pure red, one-pixel checkerboard, two-pixel
/// stripes) drive the unbounded ReLU activations of the ResNet as hard as 8-bit input can: in
/// 16-bit products (whose IEEE half-precision partial sums end at 65504 where the CPU has
/// AVX512-FP16) every descriptor stays finite and within cosine 0.9999 of the f32 one.
#[test]
fn saturated_chips_agree_across_precisions() {
    let size = FaceRecognitionNet::INPUT_SIZE;
    let chip = |f: &dyn Fn(usize, usize, usize) -> f32| {
        let mut img = FloatImage::zeros(size, size);
        for y in 0..size {
            for x in 0..size {
                for c in 0..3 {
                    img.data[(y * size + x) * 3 + c] = f(x, y, c);
                }
            }
        }
        img
    };
    let chips = [
        chip(&|_, _, _| 255.0),
        chip(&|_, _, _| 0.0),
        chip(&|_, _, c| if c == 0 { 255.0 } else { 0.0 }),
        chip(&|x, y, _| if (x + y) % 2 == 0 { 255.0 } else { 0.0 }),
        chip(&|x, _, _| if x / 2 % 2 == 0 { 255.0 } else { 0.0 }),
    ];
    let net = |precision| FaceRecognitionNet::load(&dlib_weights().with_precision(precision));
    let exact = forward(&net(Precision::F32).unwrap(), &chips);
    let half = forward(&net(Precision::Half).unwrap(), &chips);
    for (i, (exact, half)) in exact.iter().zip(&half).enumerate() {
        assert!(half.iter().all(|v| v.is_finite()), "chip {i}: {half:?}");
        let cos = cosine(exact, half);
        println!("saturated chip {i}: cosine {cos:.6} of f32");
        assert!(cos >= 0.9999, "chip {i}: cosine {cos}");
    }
}
