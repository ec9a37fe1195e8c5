//! TinyFaceDetector against face-api's golden outputs (tests/fixtures/faceapi).

use std::time::Instant;

use candle_core::{Device, Tensor};
use common::{
    best_match, demo_photo_rgb, face_api_weights, faceapi_fixture, formula_image, formula_tensor,
    max_abs_diff, max_abs_diff_tensors, precisions,
};
use rollcall_models::detection::{Detection, FaceBox};
use rollcall_models::layers::Precision;
use rollcall_models::preprocess::{to_batch_tensor, FloatImage};
use rollcall_models::tiny_face_detector::TinyFaceDetector;
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Fixed {
    tiny_raw: TinyRaw,
}

#[derive(Deserialize)]
struct TinyRaw {
    size: usize,
    output_shape: Vec<usize>,
    output_sample: Vec<f32>,
}

#[derive(Deserialize)]
struct Sample {
    image: String,
    pixel_sum: u64,
    tiny: Tiny,
}

#[derive(Deserialize)]
struct Tiny {
    input_size: usize,
    score_threshold: f32,
    faces: Vec<Detection>,
}

fn net() -> TinyFaceDetector {
    net_in(Precision::configured())
}

fn net_in(precision: Precision) -> TinyFaceDetector {
    let weights = face_api_weights(TinyFaceDetector::MODEL).with_precision(precision);
    TinyFaceDetector::load(&weights).unwrap()
}

fn samples() -> Vec<(Sample, FloatImage)> {
    (1..=6)
        .map(|i| {
            let s: Sample = faceapi_fixture(&format!("sample{i}.json"));
            let rgb = demo_photo_rgb(&s.image);
            let sum: u64 = rgb.as_raw().iter().map(|&v| u64::from(v)).sum();
            println!(
                "{}: decoded pixel sum {sum}, jpeg-js {} (diff {})",
                s.image,
                s.pixel_sum,
                sum as i64 - s.pixel_sum as i64
            );
            (s, FloatImage::from_rgb(&rgb))
        })
        .collect()
}

fn box_diff(a: &FaceBox, b: &FaceBox) -> f32 {
    [a.x - b.x, a.y - b.y, a.width - b.width, a.height - b.height]
        .iter()
        .fold(0.0f32, |m, d| m.max(d.abs()))
}

#[test]
fn raw_output_matches_face_api_on_formula_image() {
    let fixed: Fixed = faceapi_fixture("fixed.json");
    let s = fixed.tiny_raw.size;
    let x = formula_tensor(s);
    for (precision, tolerance) in precisions(1e-3, 0.2) {
        let net = net_in(precision);
        net.forward(&x).unwrap(); // warm-up, so the timing below is steady-state
        let start = Instant::now();
        let out = net.forward(&x).unwrap();
        println!(
            "{precision:?}: tiny forward {s}x{s}, batch 1: {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let nhwc = out.permute((0, 2, 3, 1)).unwrap();
        assert_eq!(nhwc.dims(), fixed.tiny_raw.output_shape.as_slice());
        let got: Vec<f32> = nhwc.flatten_all().unwrap().to_vec1().unwrap();
        let diff = max_abs_diff(&got, &fixed.tiny_raw.output_sample);
        println!(
            "{precision:?}: tiny raw output: max abs diff {diff:e} over {} values",
            fixed.tiny_raw.output_sample.len()
        );
        assert!(
            diff < tolerance,
            "{precision:?}: raw output differs by {diff}"
        );
    }
}

#[test]
fn detections_match_face_api_on_demo_photos() {
    let net = net();
    let mut min_iou = f32::INFINITY;
    let mut max_score_diff = 0.0f32;
    for (s, img) in samples() {
        let got = &net
            .detect(&[&img], s.tiny.input_size, s.tiny.score_threshold)
            .unwrap()[0];
        assert_eq!(got.len(), s.tiny.faces.len(), "{}: face count", s.image);
        for want in &s.tiny.faces {
            let (best, iou) = best_match(got, &want.bbox);
            assert!(
                iou >= 0.9,
                "{}: best IoU {iou} for {:?}",
                s.image,
                want.bbox
            );
            min_iou = min_iou.min(iou);
            max_score_diff = max_score_diff.max((best.score - want.score).abs());
        }
    }
    println!("tiny detections: min IoU {min_iou:.6}, max score diff {max_score_diff:e}");
}

#[test]
fn batched_detection_equals_single_detection() {
    let net = net();
    let samples = samples();
    let images: Vec<&FloatImage> = samples.iter().map(|(_, img)| img).collect();
    let start = Instant::now();
    let batched = net.detect(&images, 416, 0.5).unwrap();
    println!(
        "tiny detect, 6 photos in one batch: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut max_diff = 0.0f32;
    for (img, batch_dets) in images.iter().zip(&batched) {
        let single = &net.detect(&[img], 416, 0.5).unwrap()[0];
        assert_eq!(single.len(), batch_dets.len());
        for (a, b) in single.iter().zip(batch_dets) {
            max_diff = max_diff
                .max(box_diff(&a.bbox, &b.bbox))
                .max((a.score - b.score).abs());
        }
    }
    println!("tiny batched vs single: max box/score diff {max_diff:e}");
    assert!(max_diff < 1e-3, "batched detections differ by {max_diff}");

    let x = to_batch_tensor(
        &[formula_image(416), formula_image(416).pad_to_square(false)],
        &Device::Cpu,
    )
    .unwrap();
    let x = Tensor::cat(&[x, (formula_tensor(416) * 0.5).unwrap()], 0).unwrap();
    let all = net.forward(&x).unwrap();
    for i in 0..3 {
        let one = net.forward(&x.narrow(0, i, 1).unwrap()).unwrap();
        let diff = max_abs_diff_tensors(&all.narrow(0, i, 1).unwrap(), &one);
        assert!(diff < 1e-4, "raw batched output {i} differs by {diff}");
    }
}
