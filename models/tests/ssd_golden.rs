//! Golden tests of the SSD MobileNetV1 detector against face-api's own outputs.

use std::time::Instant;

use common::{
    best_match, demo_photo, face_api_weights, faceapi_fixture, formula_tensor, precisions,
};
use rollcall_models::detection::{Detection, FaceBox};
use rollcall_models::layers::Precision;
use rollcall_models::preprocess::FloatImage;
use rollcall_models::ssd_mobilenet::SsdMobilenetV1;
use rollcall_models::ModelError;
use serde::Deserialize;

mod common;

fn load_net() -> SsdMobilenetV1 {
    load_net_in(Precision::configured())
}

fn load_net_in(precision: Precision) -> SsdMobilenetV1 {
    let weights = face_api_weights(SsdMobilenetV1::MODEL).with_precision(precision);
    SsdMobilenetV1::load(&weights).unwrap()
}

#[derive(Deserialize)]
struct Fixed {
    ssd_raw: SsdRaw,
}

#[derive(Deserialize)]
struct SsdRaw {
    size: usize,
    num_anchors: usize,
    top_scores: Vec<(usize, f32)>,
    boxes_of_top: Vec<[f32; 4]>,
}

#[derive(Deserialize)]
struct Sample {
    image: String,
    pixel_sum: f64,
    width: usize,
    height: usize,
    ssd: SampleSsd,
}

#[derive(Deserialize)]
struct SampleSsd {
    min_confidence: f32,
    max_results: usize,
    faces: Vec<Detection>,
}

fn load_sample(i: usize) -> (Sample, FloatImage) {
    let sample: Sample = faceapi_fixture(&format!("sample{i}.json"));
    let img = demo_photo(&sample.image);
    assert_eq!((img.width, img.height), (sample.width, sample.height));
    (sample, img)
}

#[test]
fn raw_output_matches_face_api_on_formula_image() {
    let fixed: Fixed = faceapi_fixture("fixed.json");
    let raw = fixed.ssd_raw;
    assert_eq!(raw.size, SsdMobilenetV1::INPUT_SIZE);
    let x = formula_tensor(raw.size);
    // Score and box tolerances; rank ties get a fifth of the score's.
    let boxes_within = precisions(2e-3, 8e-2).map(|(_, t)| t);
    for ((precision, tolerance), box_tolerance) in
        precisions(1e-3, 2e-2).into_iter().zip(boxes_within)
    {
        let net = load_net_in(precision);
        let (boxes, scores) = net.forward(&x).unwrap();
        assert_eq!(boxes.dims(), &[1, raw.num_anchors, 4]);
        assert_eq!(scores.dims(), &[1, raw.num_anchors]);

        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                net.forward(&x).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min);
        println!("{precision:?}: one 512x512 forward at batch 1: {best:.1} ms (best of 3)");

        let boxes: Vec<Vec<f32>> = boxes.squeeze(0).unwrap().to_vec2().unwrap();
        let scores: Vec<f32> = scores.squeeze(0).unwrap().to_vec1().unwrap();
        let (mut max_score, mut max_box) = (0f32, 0f32);
        for (&(idx, score), want) in raw.top_scores.iter().zip(&raw.boxes_of_top) {
            max_score = max_score.max((scores[idx] - score).abs());
            for (a, b) in boxes[idx].iter().zip(want) {
                max_box = max_box.max((a - b).abs());
            }
        }
        println!(
            "{precision:?}: ssd_raw: max score diff {max_score:.2e}, max box diff {max_box:.2e}"
        );
        assert!(
            max_score < tolerance,
            "{precision:?}: score diff {max_score}"
        );
        assert!(max_box < box_tolerance, "{precision:?}: box diff {max_box}");

        // Our ranking (score desc, index asc) agrees, up to near-ties swapping places.
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for (pos, &(idx, score)) in raw.top_scores.iter().enumerate() {
            let ours = order[pos];
            assert!(
                ours == idx || (scores[ours] - score).abs() < tolerance / 5.0,
                "{precision:?}: rank {pos}: ours {ours} ({}), face-api {idx} ({score})",
                scores[ours]
            );
        }
    }
}

#[test]
fn detections_match_face_api_on_demo_photos() {
    let net = load_net();
    let (mut min_iou, mut max_score_diff) = (1f32, 0f32);
    for i in 1..=6 {
        let (sample, img) = load_sample(i);
        let found = net
            .detect(&[&img], sample.ssd.min_confidence, sample.ssd.max_results)
            .unwrap()
            .remove(0);
        assert_eq!(found.len(), sample.ssd.faces.len(), "sample{i}");
        for want in &sample.ssd.faces {
            let (best, iou) = best_match(&found, &want.bbox);
            assert!(
                iou >= 0.9,
                "sample{i}: {want:?} best match {best:?} iou {iou}"
            );
            min_iou = min_iou.min(iou);
            max_score_diff = max_score_diff.max((best.score - want.score).abs());
            println!(
                "sample{i}: iou {iou:.4} score {:.5} vs face-api {:.5}",
                best.score, want.score
            );
        }
        let sum: f64 = img.data.iter().map(|&v| f64::from(v)).sum();
        println!(
            "sample{i}: decoded pixel sum {sum} vs jpeg-js {} ({:+.2e} per sample)",
            sample.pixel_sum,
            (sum - sample.pixel_sum) / img.data.len() as f64
        );
    }
    println!("demo photos: min IoU {min_iou:.4}, max score diff {max_score_diff:.2e}");
}

#[test]
fn batched_detect_equals_single_detects() {
    let net = load_net();
    let images: Vec<FloatImage> = (1..=6).map(|i| load_sample(i).1).collect();
    let refs: Vec<&FloatImage> = images.iter().collect();
    let batched = net.detect(&refs, 0.5, 100).unwrap();
    assert_eq!(batched.len(), images.len());
    let close = |a: &FaceBox, b: &FaceBox| {
        [a.x - b.x, a.y - b.y, a.width - b.width, a.height - b.height]
            .iter()
            .all(|d| d.abs() < 1e-2)
    };
    for (img, together) in images.iter().zip(&batched) {
        let alone = net.detect(&[img], 0.5, 100).unwrap().remove(0);
        assert_eq!(together.len(), alone.len());
        for (a, b) in together.iter().zip(&alone) {
            assert!(close(&a.bbox, &b.bbox), "{a:?} vs {b:?}");
            assert!((a.score - b.score).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
    assert!(net.detect(&[], 0.5, 100).unwrap().is_empty());
}

#[test]
fn missing_tensor_is_named() {
    match SsdMobilenetV1::load(&face_api_weights("tiny_face_detector_model")) {
        Err(ModelError::MissingTensor { name }) => {
            assert_eq!(name, "Output/extra_dim");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}
