//! Every network on a CUDA GPU gives what it gives on the CPU, on real photos: the same faces
//! found (box IoU ≥ 0.95, score within 0.01), the same landmarks (within 1% of the box), the
//! same descriptors (cosine ≥ 0.999), through the whole pipeline too. Built only with the
//! `cuda` feature and run on a machine with an NVIDIA GPU (`scripts/cuda-build.sh` packs it,
//! `scripts/gpu-check.sh` runs it); `ROLLCALL_DEVICE` picks the GPU (default `cuda:0`).

#![cfg(feature = "cuda")]

use candle_core::Device;
use common::{best_match, cosine, demo_photo, demo_photo_rgb, dlib_file, model_dir, person_photo};
use common::{person_photo_rgb, OBAMA};
use rollcall_models::align::dlib_chip;
use rollcall_models::detection::{Detection, FaceBox};
use rollcall_models::device::DeviceChoice;
use rollcall_models::dlib_weights::load_dlib_resnet;
use rollcall_models::landmarks::FaceLandmark68Net;
use rollcall_models::pipeline::{FacePipeline, PipelineConfig};
use rollcall_models::preprocess::FloatImage;
use rollcall_models::recognition::FaceRecognitionNet;
use rollcall_models::ssd_mobilenet::SsdMobilenetV1;
use rollcall_models::tfjs::WeightMap;
use rollcall_models::tiny_face_detector::TinyFaceDetector;

mod common;

fn gpu() -> Device {
    let choice = DeviceChoice::from_env(DeviceChoice::Cuda(0)).unwrap();
    let device = choice.open().expect("a CUDA GPU");
    assert!(device.is_cuda(), "{choice} opened {device:?}, not a GPU");
    device
}

/// `run` on the CPU and on the GPU.
fn on_both<T>(run: impl Fn(&Device) -> T) -> (T, T) {
    (run(&Device::Cpu), run(&gpu()))
}

fn weights(model: &str, device: &Device) -> WeightMap {
    WeightMap::load(&model_dir().join("model"), model, device).unwrap()
}

/// The group photos and the one-person photos.
fn photos() -> Vec<FloatImage> {
    let mut out: Vec<FloatImage> = (1..=6)
        .map(|i| demo_photo(&format!("sample{i}.jpg")))
        .collect();
    out.extend(OBAMA.iter().chain(&["biden.jpg"]).map(|n| person_photo(n)));
    out
}

/// Every confident CPU detection has a GPU detection on the same face with the same score;
/// no confident GPU detection is missing from the CPU's.
fn assert_same_faces(what: &str, cpu: &[Vec<Detection>], gpu: &[Vec<Detection>]) {
    assert_eq!(cpu.len(), gpu.len());
    let mut compared = 0;
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        for (one, other, side) in [(c, g, "GPU"), (g, c, "CPU")] {
            for d in one.iter().filter(|d| d.score >= 0.6) {
                assert!(
                    !other.is_empty(),
                    "{what} image {i}: the {side} found no face"
                );
                let (m, iou) = best_match(other, &d.bbox);
                assert!(
                    iou >= 0.95 && (m.score - d.score).abs() <= 0.01,
                    "{what} image {i}: {d:?} ~ {side} {m:?} (IoU {iou:.3})"
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 2 * 20, "{what}: only {compared} faces compared");
}

#[test]
fn detectors_find_the_same_faces() {
    let images = photos();
    let refs: Vec<&FloatImage> = images.iter().collect();
    let (cpu, gpu) = on_both(|d| {
        let net = SsdMobilenetV1::load(&weights(SsdMobilenetV1::MODEL, d)).unwrap();
        net.detect(&refs, 0.5, 100).unwrap()
    });
    assert_same_faces("SSD", &cpu, &gpu);
    let (cpu, gpu) = on_both(|d| {
        let net = TinyFaceDetector::load(&weights(TinyFaceDetector::MODEL, d)).unwrap();
        net.detect(&refs, 416, 0.5).unwrap()
    });
    assert_same_faces("Tiny", &cpu, &gpu);
}

/// Every face the CPU's SSD finds in the photos, with its image.
fn faces(images: &[FloatImage]) -> Vec<(&FloatImage, FaceBox)> {
    let refs: Vec<&FloatImage> = images.iter().collect();
    let ssd = SsdMobilenetV1::load(&weights(SsdMobilenetV1::MODEL, &Device::Cpu)).unwrap();
    let found = ssd.detect(&refs, 0.5, 100).unwrap();
    images
        .iter()
        .zip(found)
        .flat_map(|(img, dets)| dets.into_iter().map(move |d| (img, d.bbox)))
        .collect()
}

#[test]
fn landmarks_and_descriptors_agree_face_by_face() {
    let images = photos();
    let faces = faces(&images);
    assert!(faces.len() >= 26, "{} faces", faces.len());
    let (on_cpu, on_gpu) = on_both(|d| {
        let net = FaceLandmark68Net::load(&weights(FaceLandmark68Net::MODEL, d)).unwrap();
        net.detect(&faces).unwrap()
    });
    for ((_, bbox), (c, g)) in faces.iter().zip(on_cpu.iter().zip(&on_gpu)) {
        for (p, q) in c.points.iter().zip(&g.points) {
            let off = (p[0] - q[0]).hypot(p[1] - q[1]);
            assert!(
                off <= 0.01 * bbox.width.max(bbox.height),
                "{p:?} vs {q:?} in {bbox:?}"
            );
        }
    }

    let chips: Vec<FloatImage> = faces
        .iter()
        .zip(&on_cpu)
        .map(|((img, _), lm)| dlib_chip(img, &lm.points))
        .collect();
    let chip_refs: Vec<&FloatImage> = chips.iter().collect();
    let (on_cpu, on_gpu) = on_both(|d| {
        let net = FaceRecognitionNet::load(&load_dlib_resnet(&dlib_file(), d).unwrap()).unwrap();
        net.embed(&chip_refs).unwrap()
    });
    let worst = on_cpu
        .iter()
        .zip(&on_gpu)
        .map(|(c, g)| cosine(c, g))
        .fold(1.0f32, f32::min);
    eprintln!(
        "{} descriptors, worst CPU/GPU cosine {worst:.6}",
        chips.len()
    );
    assert!(worst >= 0.999, "worst cosine {worst}");
}

#[test]
fn the_whole_pipeline_agrees() {
    let mut images: Vec<_> = (1..=6)
        .map(|i| demo_photo_rgb(&format!("sample{i}.jpg")))
        .collect();
    images.push(person_photo_rgb("obama.jpg"));
    let (on_cpu, on_gpu) = on_both(|d| {
        let pipeline = FacePipeline::load(&model_dir(), d, PipelineConfig::default()).unwrap();
        pipeline.process(&images).unwrap().faces
    });
    let mut compared = 0;
    for (c, g) in on_cpu.iter().zip(&on_gpu) {
        for face in c.iter().filter(|f| f.detection.score >= 0.6) {
            let other = g
                .iter()
                .max_by(|a, b| {
                    let (ia, ib) = (
                        a.detection.bbox.iou(&face.detection.bbox),
                        b.detection.bbox.iou(&face.detection.bbox),
                    );
                    ia.total_cmp(&ib)
                })
                .expect("the GPU found the face");
            let s = cosine(&face.embedding, &other.embedding);
            assert!(s >= 0.999, "{:?}: cosine {s}", face.detection);
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} faces compared");
}
