//! FaceRecognitionNet and alignment against face-api's golden fixtures and the real demo photos.

use std::time::Instant;

use candle_core::{Device, Tensor};
use common::{
    cosine, demo_photo, face_api_weights, faceapi_fixture, floats, formula_tensor, max_abs_diff,
    points,
};
use rollcall_models::align::{
    assess, dlib_chip, face_api_crop, face_api_descriptor_box, template_eye_centres, ChipTransform,
    MIN_INTEROCULAR_PX, MIN_SHARPNESS,
};
use rollcall_models::detection::FaceBox;
use rollcall_models::preprocess::FloatImage;
use rollcall_models::recognition::FaceRecognitionNet;
use serde_json::Value;

mod common;

fn net() -> FaceRecognitionNet {
    FaceRecognitionNet::load(&face_api_weights(FaceRecognitionNet::MODEL)).unwrap()
}

fn face_box(v: &Value) -> FaceBox {
    serde_json::from_value(v.clone()).unwrap()
}

/// The ssd faces of sampleN.json with their photo.
fn samples() -> Vec<(FloatImage, Vec<Value>)> {
    (1..=6)
        .map(|n| {
            let fx: Value = faceapi_fixture(&format!("sample{n}.json"));
            let img = demo_photo(fx["image"].as_str().unwrap());
            (img, fx["ssd"]["faces"].as_array().unwrap().clone())
        })
        .collect()
}

#[test]
fn raw_descriptor_of_formula_image_matches_face_api() {
    let fx: Value = faceapi_fixture("fixed.json");
    let size = fx["recognition"]["size"].as_u64().unwrap() as usize;
    assert_eq!(size, FaceRecognitionNet::INPUT_SIZE);
    let expected = floats(&fx["recognition"]["descriptor"]);
    let net = net();
    let x = formula_tensor(size);
    let got: Vec<f32> = net
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (cos, diff) = (cosine(&got, &expected), max_abs_diff(&got, &expected));
    println!("formula descriptor: cosine {cos:.7}, max abs diff {diff:.2e}");
    assert!(cos >= 0.9999, "cosine {cos}");
    assert!(diff < 1e-3, "max abs diff {diff}");
}

#[test]
fn descriptors_of_demo_photos_match_face_api() {
    let net = net();
    let mut min_cos = f32::MAX;
    let mut count = 0;
    for (img, faces) in samples() {
        for face in &faces {
            let desc_box = face_box(&face["descriptor_box"]);
            // face-api's alignment box, recomputed from its (6-digit rounded) landmarks.
            let ours = face_api_descriptor_box(&points(&face["landmarks"]), img.width, img.height);
            for (a, b) in [
                (ours.x, desc_box.x),
                (ours.y, desc_box.y),
                (ours.width, desc_box.width),
                (ours.height, desc_box.height),
            ] {
                assert!((a - b).abs() <= 1.0, "{ours:?} vs {desc_box:?}");
            }
            let crop = face_api_crop(&img, &desc_box).unwrap();
            let got = &net.embed(&[&crop]).unwrap()[0];
            let cos = cosine(got, &floats(&face["descriptor"]));
            min_cos = min_cos.min(cos);
            count += 1;
            assert!(cos >= 0.999, "cosine {cos}");
        }
    }
    println!("{count} demo faces: min cosine {min_cos:.6}");
    assert!(count >= 6);
}

#[test]
fn batched_embed_equals_single_embeds() {
    let net = net();
    let crops: Vec<FloatImage> = samples()
        .iter()
        .flat_map(|(img, faces)| {
            faces
                .iter()
                .map(|f| face_api_crop(img, &face_box(&f["descriptor_box"])).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let refs: Vec<&FloatImage> = crops.iter().collect();
    let batched = net.embed(&refs).unwrap();
    assert_eq!(batched.len(), crops.len());
    let mut worst = 0.0f32;
    for (crop, b) in crops.iter().zip(&batched) {
        let single = &net.embed(&[crop]).unwrap()[0];
        worst = worst.max(max_abs_diff(single, b));
        let norm: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    println!(
        "{} faces: batched vs single max abs diff {worst:.2e}",
        crops.len()
    );
    assert!(worst < 1e-4);
}

#[test]
fn forward_timing_is_printed() {
    let net = net();
    for n in [1usize, 8] {
        let x = Tensor::rand(0f32, 255f32, (n, 3, 150, 150), &Device::Cpu).unwrap();
        net.forward(&x).unwrap(); // warm-up
        let runs = 3;
        let start = Instant::now();
        for _ in 0..runs {
            net.forward(&x).unwrap();
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
        println!(
            "FaceRecognitionNet forward, batch {n}: {ms:.1} ms ({:.1} ms per face)",
            ms / n as f64
        );
    }
}

/// Eye centres of a face in its dlib chip, and the chip itself.
fn chip_eyes(img: &FloatImage, lm: &[[f32; 2]]) -> ([f64; 2], [f64; 2], FloatImage, f64) {
    let chip = dlib_chip(img, lm);
    let t = ChipTransform::from_landmarks(lm);
    let centre = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let s = lm[r].iter().fold([0.0, 0.0], |a, p| {
            [a[0] + f64::from(p[0]), a[1] + f64::from(p[1])]
        });
        t.to_chip([s[0] / n, s[1] / n])
    };
    (centre(36..42), centre(42..48), chip, t.angle.to_degrees())
}

/// dlib's template eye centres in chip pixels: chip pixel `c` samples template coordinate
/// `c + 0.5` (dlib's `centered_drect` spans `size·scale − 1`), hence the half-pixel shift.
fn template_eyes_in_chip() -> [[f64; 2]; 2] {
    template_eye_centres().map(|p| [p[0] - 0.5, p[1] - 0.5])
}

#[test]
fn dlib_chips_of_demo_faces_are_level_and_on_template() {
    let [tl, tr] = template_eyes_in_chip();
    let near = |got: [f64; 2], want: [f64; 2], tol: f64| {
        (got[0] - want[0]).abs() <= tol && (got[1] - want[1]).abs() <= tol
    };
    let (mut sum_l, mut sum_r, mut sum_dy, mut n) = ([0.0; 2], [0.0; 2], 0.0, 0.0);
    for (k, (img, faces)) in samples().iter().enumerate() {
        for (i, face) in faces.iter().enumerate() {
            let (l, r, chip, angle) = chip_eyes(img, &points(&face["landmarks"]));
            println!(
                "sample{} face {i}: chip eyes ({:.1}, {:.1}) ({:.1}, {:.1}), head roll {angle:.1} deg",
                k + 1,
                l[0],
                l[1],
                r[0],
                r[1]
            );
            assert_eq!((chip.width, chip.height), (150, 150));
            // The chip shows the face, not the zero fill of out-of-image pixels.
            assert!(chip.at(75, 75, 0) + chip.at(75, 75, 1) + chip.at(75, 75, 2) > 0.0);
            // Every face, however turned (sample2 face 2 is a profile): roll corrected and
            // scaled to the template, within the 2-D fit's residual for out-of-plane poses.
            assert!((l[1] - r[1]).abs() < 6.0, "{l:?} {r:?}");
            assert!(near(l, tl, 10.0) && near(r, tr, 10.0), "{l:?} {r:?}");
            // Near-frontal studio portraits (sample6): level and on the template.
            if k == 5 {
                assert!((l[1] - r[1]).abs() < 2.0, "{l:?} {r:?}");
                assert!(near(l, tl, 3.0) && near(r, tr, 3.0), "{l:?} {r:?}");
            }
            for d in 0..2 {
                sum_l[d] += l[d];
                sum_r[d] += r[d];
            }
            sum_dy += (l[1] - r[1]).abs();
            n += 1.0;
        }
    }
    let (ml, mr) = (sum_l.map(|v| v / n), sum_r.map(|v| v / n));
    println!(
        "mean over {n} faces: eyes ({:.1}, {:.1}) ({:.1}, {:.1}), mean |dy| {:.2}; template ({:.1}, {:.1}) ({:.1}, {:.1})",
        ml[0], ml[1], mr[0], mr[1], sum_dy / n, tl[0], tl[1], tr[0], tr[1]
    );
    assert!(sum_dy / n < 2.0);
    assert!(near(ml, tl, 3.0) && near(mr, tr, 3.0));
}

fn gaussian_blur(img: &FloatImage, sigma: f32) -> FloatImage {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let pass = |src: &FloatImage, horizontal: bool| {
        let mut out = FloatImage::zeros(src.width, src.height);
        for y in 0..src.height {
            for x in 0..src.width {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (k, w) in kernel.iter().enumerate() {
                        let d = k as isize - radius;
                        let (sx, sy) = if horizontal {
                            (
                                (x as isize + d).clamp(0, src.width as isize - 1) as usize,
                                y,
                            )
                        } else {
                            (
                                x,
                                (y as isize + d).clamp(0, src.height as isize - 1) as usize,
                            )
                        };
                        acc += w * src.at(sx, sy, c);
                    }
                    out.data[(y * src.width + x) * 3 + c] = acc;
                }
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

#[test]
fn quality_accepts_sharp_faces_and_flags_blurred_or_tiny_ones() {
    let mut all = samples();
    let (img, faces) = all.swap_remove(0);
    let lm = points(&faces[0]["landmarks"]);
    let q = assess(&img, &lm, &dlib_chip(&img, &lm));
    println!("sharp: {q:?}");
    assert!(q.acceptable && q.score > 0.5, "{q:?}");

    // Blur only the face's neighbourhood (cheaper than the whole photo).
    let bbox = face_box(&faces[0]["box"]);
    let margin = bbox.width;
    let region = FaceBox {
        x: bbox.x - margin,
        y: bbox.y - margin,
        width: bbox.width + 2.0 * margin,
        height: bbox.height + 2.0 * margin,
    };
    let (rx, ry, rw, rh) = region.clip_floor(img.width, img.height).unwrap();
    let local = img.crop(rx, ry, rw, rh);
    let local_lm: Vec<[f32; 2]> = lm
        .iter()
        .map(|p| [p[0] - rx as f32, p[1] - ry as f32])
        .collect();
    let blurred = gaussian_blur(&local, 3.0);
    let qb = assess(&blurred, &local_lm, &dlib_chip(&blurred, &local_lm));
    println!("blurred (sigma 3): {qb:?}");
    assert!(!qb.acceptable && qb.sharpness < MIN_SHARPNESS, "{qb:?}");
    assert!(qb.score < q.score);

    // Downscale so the eyes are 16 px apart.
    let factor = 16.0 / q.face_px;
    let (w, h) = (
        (local.width as f32 * factor).round() as usize,
        (local.height as f32 * factor).round() as usize,
    );
    let small = local.resize_bilinear(w, h);
    let small_lm: Vec<[f32; 2]> = local_lm
        .iter()
        .map(|p| {
            [
                p[0] * w as f32 / local.width as f32,
                p[1] * h as f32 / local.height as f32,
            ]
        })
        .collect();
    let qs = assess(&small, &small_lm, &dlib_chip(&small, &small_lm));
    println!("downscaled: {qs:?}");
    assert!(!qs.acceptable && qs.face_px < MIN_INTEROCULAR_PX, "{qs:?}");
    assert!(qs.score < q.score);
}

#[test]
fn quality_of_all_demo_faces_is_printed() {
    for (n, (img, faces)) in samples().iter().enumerate() {
        for (i, face) in faces.iter().enumerate() {
            let lm = points(&face["landmarks"]);
            let q = assess(img, &lm, &dlib_chip(img, &lm));
            println!(
                "sample{} face {i}: inter-ocular {:.1} px, sharpness {:.1}, score {:.2}, acceptable {}",
                n + 1,
                q.face_px,
                q.sharpness,
                q.score,
                q.acceptable
            );
        }
    }
}
