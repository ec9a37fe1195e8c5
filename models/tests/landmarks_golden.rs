//! FaceLandmark68Net against face-api's golden outputs (tests/fixtures/faceapi).

use std::time::Instant;

use candle_core::Device;
use common::{demo_photo, face_api_weights, faceapi_fixture, formula_image, precisions};
use rollcall_models::detection::FaceBox;
use rollcall_models::landmarks::{FaceLandmark68Net, Landmarks68};
use rollcall_models::layers::Precision;
use rollcall_models::preprocess::{to_batch_tensor, FloatImage};
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Fixed {
    landmarks: FixedLandmarks,
}

#[derive(Deserialize)]
struct FixedLandmarks {
    size: usize,
    points: Vec<[f32; 2]>,
}

#[derive(Deserialize)]
struct Sample {
    image: String,
    ssd: Ssd,
}

#[derive(Deserialize)]
struct Ssd {
    faces: Vec<Face>,
}

#[derive(Deserialize)]
struct Face {
    #[serde(rename = "box")]
    bbox: FaceBox,
    landmarks_box: FaceBox,
    landmarks: Vec<[f32; 2]>,
}

fn net() -> FaceLandmark68Net {
    net_in(Precision::configured())
}

fn net_in(precision: Precision) -> FaceLandmark68Net {
    let weights = face_api_weights(FaceLandmark68Net::MODEL).with_precision(precision);
    FaceLandmark68Net::load(&weights).unwrap()
}

fn samples() -> Vec<(Sample, FloatImage)> {
    (1..=6)
        .map(|i| {
            let s: Sample = faceapi_fixture(&format!("sample{i}.json"));
            let img = demo_photo(&s.image);
            (s, img)
        })
        .collect()
}

fn max_point_error(got: &Landmarks68, want: &[[f32; 2]]) -> f32 {
    assert_eq!(got.points.len(), want.len());
    got.points.iter().zip(want).fold(0.0f32, |m, (a, b)| {
        m.max((a[0] - b[0]).abs()).max((a[1] - b[1]).abs())
    })
}

#[test]
fn landmarks_match_face_api_on_formula_image() {
    let fixed: Fixed = faceapi_fixture("fixed.json");
    let s = fixed.landmarks.size;
    assert_eq!(s, FaceLandmark68Net::INPUT_SIZE);
    let img = formula_image(s);
    let whole = FaceBox {
        x: 0.0,
        y: 0.0,
        width: s as f32,
        height: s as f32,
    };
    for (precision, tolerance) in precisions(0.05, 0.4) {
        let got = &net_in(precision).detect(&[(&img, whole)]).unwrap()[0];
        let err = max_point_error(got, &fixed.landmarks.points);
        println!("{precision:?}: landmarks on formula image: max error {err:e} px");
        assert!(
            err < tolerance,
            "{precision:?}: landmarks differ by {err} px"
        );
    }

    let net = net();

    let x = to_batch_tensor(&[img], &Device::Cpu).unwrap();
    net.forward(&x).unwrap(); // warm-up, so the timing below is steady-state
    let start = Instant::now();
    let raw = net.forward(&x).unwrap();
    println!(
        "landmark forward 112x112, batch 1: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(raw.dims(), &[1, 136]);
}

#[test]
fn landmarks_match_face_api_on_demo_photos() {
    let net = net();
    let mut max_err = 0.0f32;
    let mut count = 0;
    for (s, img) in samples() {
        for (i, face) in s.ssd.faces.iter().enumerate() {
            let (x, y, w, h) = face.bbox.clip_floor(img.width, img.height).unwrap();
            let b = face.landmarks_box;
            assert_eq!(
                (x as f32, y as f32, w as f32, h as f32),
                (b.x, b.y, b.width, b.height),
                "{} face {i}: crop",
                s.image
            );
            let got = &net.detect(&[(&img, face.bbox)]).unwrap()[0];
            let err = max_point_error(got, &face.landmarks);
            println!("{} face {i}: max landmark error {err:.4} px", s.image);
            assert!(
                err <= 1.0,
                "{} face {i}: landmarks differ by {err} px",
                s.image
            );
            max_err = max_err.max(err);
            count += 1;
        }
    }
    println!("landmarks on {count} demo faces: max error {max_err:.4} px");
}

#[test]
fn batched_landmarks_equal_single_landmarks() {
    let net = net();
    let samples = samples();
    let faces: Vec<(&FloatImage, FaceBox)> = samples
        .iter()
        .flat_map(|(s, img)| s.ssd.faces.iter().map(move |f| (img, f.bbox)))
        .collect();
    let start = Instant::now();
    let batched = net.detect(&faces).unwrap();
    println!(
        "landmark detect, {} faces in one batch: {:.1} ms",
        faces.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(batched.len(), faces.len());
    let mut max_diff = 0.0f32;
    for (face, got) in faces.iter().zip(&batched) {
        let single = &net.detect(std::slice::from_ref(face)).unwrap()[0];
        max_diff = max_diff.max(max_point_error(got, &single.points));
    }
    println!("landmarks batched vs single: max diff {max_diff:e} px");
    assert!(max_diff < 1e-3, "batched landmarks differ by {max_diff} px");
}

#[test]
fn face_box_outside_the_image_is_an_error() {
    let net = net();
    let img = formula_image(64);
    let outside = FaceBox {
        x: 100.0,
        y: 0.0,
        width: 10.0,
        height: 10.0,
    };
    assert!(net.detect(&[(&img, outside)]).is_err());
}
