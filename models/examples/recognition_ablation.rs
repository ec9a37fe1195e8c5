//! Recognition accuracy ablation: {face-api uint8 weights, dlib float32 weights} ×
//! {face-api crop, dlib chip}, on real photos, with dlib's own pipeline (from the golden
//! fixtures) as the reference.
//!
//! - genuine pairs: the one-person photos `obama*.jpg` of face_recognition's test images
//!   (all 5, and the 3 full-face ones);
//! - impostor pairs: all SSD faces of face-api's six group photos `sample1..6.jpg`;
//! - obama vs biden.
//!
//! Distances are Euclidean between L2-normalised embeddings ("unit", what Rollcall stores) and
//! between raw descriptors ("raw", dlib's 0.6 convention). Run:
//!
//! ```sh
//! scripts/fetch-assets.sh
//! cargo run -p rollcall-models --example recognition_ablation
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use common::{cosine, demo_photo, distance, person_photo, OBAMA};
use rollcall_models::align::{dlib_chip, face_api_crop, face_api_descriptor_box, CHIP_SIZE};
use rollcall_models::landmarks::FaceLandmark68Net;
use rollcall_models::preprocess::{to_batch_tensor, FloatImage};
use rollcall_models::recognition::FaceRecognitionNet;
use rollcall_models::ssd_mobilenet::SsdMobilenetV1;
use serde_json::Value;

/// The integration tests' helpers: asset paths, photos, weights, distances.
#[path = "../tests/common/mod.rs"]
mod common;

/// Indices of the full-face obama photos in [`OBAMA`].
const FULL: [usize; 3] = [0, 1, 2];

/// Raw descriptors of one variant: obama photos, biden, group faces.
struct Set {
    obama: Vec<Vec<f32>>,
    biden: Vec<f32>,
    group: Vec<Vec<f32>>,
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

fn pairs(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).flat_map(move |i| (i + 1..n).map(move |j| (i, j)))
}

/// The metrics of one variant, with distance `d`.
fn row(name: &str, set: &Set, d: &dyn Fn(&[f32], &[f32]) -> f32) -> String {
    let gen_all: Vec<f32> = pairs(OBAMA.len())
        .map(|(i, j)| d(&set.obama[i], &set.obama[j]))
        .collect();
    let gen_full: Vec<f32> = pairs(FULL.len())
        .map(|(i, j)| d(&set.obama[FULL[i]], &set.obama[FULL[j]]))
        .collect();
    let imp: Vec<f32> = pairs(set.group.len())
        .map(|(i, j)| d(&set.group[i], &set.group[j]))
        .collect();
    let biden: Vec<f32> = set.obama.iter().map(|o| d(o, &set.biden)).collect();
    let max = |v: &[f32]| v.iter().copied().fold(f32::MIN, f32::max);
    let min = |v: &[f32]| v.iter().copied().fold(f32::MAX, f32::min);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let at = |v: &[f32], t: f32| v.iter().filter(|&&x| x <= t).count();
    format!(
        "| {name} | {:.3} / {:.3} | {:.3} / {:.3} | {}/{} | {}/{} | {:.3} | {:.3} | {:.3} |",
        mean(&gen_full),
        max(&gen_full),
        mean(&gen_all),
        max(&gen_all),
        at(&imp, 0.5),
        imp.len(),
        at(&imp, 0.6),
        imp.len(),
        min(&imp),
        min(&biden),
        mean(&biden),
    )
}

fn table(title: &str, sets: &[(String, Set)], d: &dyn Fn(&[f32], &[f32]) -> f32) {
    println!("\n### {title}\n");
    println!("| variant | genuine 3 full obama: mean / max | genuine all 5 obama: mean / max | impostors ≤ 0.5 | impostors ≤ 0.6 | closest impostor | obama–biden min | obama–biden mean |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, set) in sets {
        println!("{}", row(name, set, d));
    }
}

/// Cosine-similarity threshold sweep: false matches among the group faces, genuine passes.
fn sweep(sets: &[(String, Set)]) {
    println!("\n### Cosine similarity thresholds (L2-normalised embeddings)\n");
    print!("| threshold |");
    for (name, _) in sets {
        print!(" {name}: FM / genuine 5 / genuine 3 |");
    }
    println!();
    println!("|---|{}", "---|".repeat(sets.len()));
    for t in (80..=96).map(|t| t as f32 / 100.0) {
        print!("| {t:.2} |");
        for (_, set) in sets {
            let fm = pairs(set.group.len())
                .filter(|&(i, j)| cosine(&set.group[i], &set.group[j]) >= t)
                .count();
            let g5 = pairs(OBAMA.len())
                .filter(|&(i, j)| cosine(&set.obama[i], &set.obama[j]) >= t)
                .count();
            let g3 = pairs(FULL.len())
                .filter(|&(i, j)| cosine(&set.obama[FULL[i]], &set.obama[FULL[j]]) >= t)
                .count();
            let bid = set
                .obama
                .iter()
                .filter(|o| cosine(o, &set.biden) >= t)
                .count();
            print!(
                " {fm} / {g5}/10 / {g3}/3{} |",
                if bid > 0 { " (biden!)" } else { "" }
            );
        }
        println!();
    }
    for (name, set) in sets {
        let max_imp = pairs(set.group.len())
            .map(|(i, j)| cosine(&set.group[i], &set.group[j]))
            .fold(f32::MIN, f32::max);
        let min_gen = |idx: &[usize]| {
            pairs(idx.len())
                .map(|(i, j)| cosine(&set.obama[idx[i]], &set.obama[idx[j]]))
                .fold(f32::MAX, f32::min)
        };
        let max_biden = set
            .obama
            .iter()
            .map(|o| cosine(o, &set.biden))
            .fold(f32::MIN, f32::max);
        println!(
            "- {name}: most similar impostor pair {max_imp:.4}, obama–biden max {max_biden:.4}, \
             least similar genuine pair {:.4} (3 full) / {:.4} (all 5)",
            min_gen(&FULL),
            min_gen(&[0, 1, 2, 3, 4]),
        );
    }
}

struct Models {
    ssd: SsdMobilenetV1,
    landmarks: FaceLandmark68Net,
    nets: [FaceRecognitionNet; 2],
    device: Device,
}

/// Faces of `img` (all SSD detections, or only the best one): landmarks.
fn faces(m: &Models, img: &FloatImage, best_only: bool) -> Result<Vec<Vec<[f32; 2]>>> {
    let mut dets = m.ssd.detect(&[img], 0.5, 100)?.remove(0);
    if best_only {
        dets.truncate(1);
    }
    let crops: Vec<(&FloatImage, _)> = dets.iter().map(|d| (img, d.bbox)).collect();
    Ok(m.landmarks
        .detect(&crops)?
        .into_iter()
        .map(|l| l.points)
        .collect())
}

/// Raw descriptors of `faces` for each of the four variants, in [`VARIANTS`] order.
fn describe(m: &Models, faces: &[(&FloatImage, Vec<[f32; 2]>)]) -> Result<Vec<Vec<Vec<f32>>>> {
    let size = FaceRecognitionNet::INPUT_SIZE;
    let crops = faces
        .iter()
        .map(|(img, lm)| {
            let bbox = face_api_descriptor_box(lm, img.width, img.height);
            let crop = face_api_crop(img, &bbox).context("face-api crop outside the image")?;
            Ok(crop.pad_to_square(true).resize_bilinear(size, size))
        })
        .collect::<Result<Vec<_>>>()?;
    let chips: Vec<FloatImage> = faces.iter().map(|(img, lm)| dlib_chip(img, lm)).collect();
    assert_eq!(CHIP_SIZE, size);
    let mut out = Vec::new();
    for net in &m.nets {
        for inputs in [&crops, &chips] {
            let batch = to_batch_tensor(inputs, &m.device)?;
            out.push(net.forward(&batch)?.to_vec2()?);
        }
    }
    Ok(out)
}

const VARIANTS: [&str; 4] = [
    "face-api uint8 + face-api crop",
    "face-api uint8 + dlib chip",
    "dlib f32 + face-api crop",
    "dlib f32 + dlib chip",
];

/// dlib's own pipeline (HOG detector, 68-point predictor, chip, ResNet) from the fixtures.
fn dlib_reference(fixtures: &Path) -> Option<Set> {
    let read = |stem: &str| -> Option<Vec<Vec<f32>>> {
        let text = std::fs::read(fixtures.join(format!("{stem}.json"))).ok()?;
        let v: Value = serde_json::from_slice(&text).ok()?;
        Some(
            v["faces"]
                .as_array()?
                .iter()
                .map(|f| {
                    f["descriptor"]
                        .as_array()
                        .map(|d| {
                            d.iter()
                                .filter_map(|x| x.as_f64())
                                .map(|x| x as f32)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect(),
        )
    };
    let mut obama = Vec::new();
    for name in OBAMA {
        let stem = name.trim_end_matches(".jpg");
        match read(stem)?.into_iter().next() {
            Some(d) => obama.push(d),
            None => {
                println!("(dlib's HOG detector finds no face in {name})");
                return None;
            }
        }
    }
    let biden = read("biden")?.into_iter().next()?;
    let mut group = Vec::new();
    for i in 1..=6 {
        group.extend(read(&format!("sample{i}"))?);
    }
    Some(Set {
        obama,
        biden,
        group,
    })
}

fn main() -> Result<()> {
    let weights = common::face_api_weights;
    let models = Models {
        ssd: SsdMobilenetV1::load(&weights(SsdMobilenetV1::MODEL))?,
        landmarks: FaceLandmark68Net::load(&weights(FaceLandmark68Net::MODEL))?,
        nets: [
            FaceRecognitionNet::load(&weights(FaceRecognitionNet::MODEL))?,
            FaceRecognitionNet::load(&common::dlib_weights())?,
        ],
        device: Device::Cpu,
    };

    let photos: Vec<(String, FloatImage)> = OBAMA
        .iter()
        .chain(&["biden.jpg"])
        .map(|name| (name.to_string(), person_photo(name)))
        .collect();
    let mut single = Vec::new();
    for (name, img) in &photos {
        let lm = faces(&models, img, true)?
            .pop()
            .with_context(|| format!("SSD finds no face in {name}"))?;
        single.push((img, lm));
    }
    let groups: Vec<FloatImage> = (1..=6)
        .map(|i| demo_photo(&format!("sample{i}.jpg")))
        .collect();
    let mut group_faces = Vec::new();
    let mut labels = Vec::new();
    for (g, img) in groups.iter().enumerate() {
        for (k, lm) in faces(&models, img, false)?.into_iter().enumerate() {
            let nose = lm[30];
            labels.push(format!(
                "sample{}#{k} (nose at {:.0},{:.0})",
                g + 1,
                nose[0],
                nose[1]
            ));
            group_faces.push((img, lm));
        }
    }
    let single_d = describe(&models, &single)?;
    let group_d = describe(&models, &group_faces)?;
    let mut sets: Vec<(String, Set)> = VARIANTS
        .iter()
        .zip(single_d.into_iter().zip(group_d))
        .map(|(name, (mut s, g))| {
            let biden = s.pop().unwrap_or_default();
            (
                name.to_string(),
                Set {
                    obama: s,
                    biden,
                    group: g,
                },
            )
        })
        .collect();
    println!(
        "SSD (min confidence 0.5): {} faces in the 6 group photos ({} impostor pairs)",
        group_faces.len(),
        group_faces.len() * (group_faces.len() - 1) / 2
    );
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dlib");
    if let Some(set) = dlib_reference(&fixtures) {
        println!(
            "dlib's HOG detector: {} faces in the group photos ({} pairs)",
            set.group.len(),
            set.group.len() * (set.group.len() - 1) / 2
        );
        sets.push((
            "dlib's own pipeline (HOG + shape predictor)".to_owned(),
            set,
        ));
    }
    let unit_sets: Vec<(String, Set)> = sets
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                Set {
                    obama: s.obama.iter().map(|v| unit(v)).collect(),
                    biden: unit(&s.biden),
                    group: s.group.iter().map(|v| unit(v)).collect(),
                },
            )
        })
        .collect();
    table(
        "Euclidean distance between L2-normalised embeddings",
        &unit_sets,
        &distance,
    );
    table(
        "Euclidean distance between raw descriptors",
        &sets,
        &distance,
    );
    sweep(&sets);
    let (name, best) = &sets[3];
    let mut close: Vec<(f32, usize, usize)> = pairs(best.group.len())
        .map(|(i, j)| (cosine(&best.group[i], &best.group[j]), i, j))
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("\n### Most similar group-photo pairs, {name}\n");
    for (c, i, j) in close.iter().take(8) {
        println!("- {c:.4}: {} – {}", labels[*i], labels[*j]);
    }
    Ok(())
}
