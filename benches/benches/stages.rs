//! Per-stage speed of the face pipeline on real photos: detection (SSD, Tiny) on 640×480
//! frames, landmarks, alignment (the dlib chip and its quality check, one face after another)
//! and embedding per face at batch 1, 8 and 32, and the whole pipeline.
//! `cargo bench -p rollcall-benches --bench stages`; on a GPU (a build with `--features cuda`,
//! `ROLLCALL_DEVICE=cuda`) also the larger batches a GPU is fed.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rollcall_benches::{bench_device, frame, model_dir};
use rollcall_models::align::{assess, dlib_chip};
use rollcall_models::landmarks::FaceLandmark68Net;
use rollcall_models::pipeline::{FacePipeline, PipelineConfig};
use rollcall_models::preprocess::FloatImage;
use rollcall_models::recognition::FaceRecognitionNet;
use rollcall_models::ssd_mobilenet::SsdMobilenetV1;
use rollcall_models::tfjs::WeightMap;
use rollcall_models::tiny_face_detector::TinyFaceDetector;

fn weights(model: &str, device: &Device) -> WeightMap {
    WeightMap::load(&model_dir().join("model"), model, device)
        .expect("weights; run scripts/fetch-assets.sh")
}

fn stages(c: &mut Criterion) {
    // As `rollcall` runs (unless GLIBC_TUNABLES is set).
    rollcall_server::allocator::keep_freed_memory();
    let device = bench_device();
    let gpu = !device.is_cpu();
    let weights = |model| weights(model, &device);
    let frames: Vec<FloatImage> = (1..=6).map(|i| FloatImage::from_rgb(&frame(i))).collect();
    let ssd = SsdMobilenetV1::load(&weights(SsdMobilenetV1::MODEL)).unwrap();
    let tiny = TinyFaceDetector::load(&weights(TinyFaceDetector::MODEL)).unwrap();
    let marks = FaceLandmark68Net::load(&weights(FaceLandmark68Net::MODEL)).unwrap();
    let recog = FaceRecognitionNet::load(&weights(FaceRecognitionNet::MODEL)).unwrap();

    // Every face of the frames, with its frame, box, landmarks and chip.
    let refs: Vec<&FloatImage> = frames.iter().collect();
    let dets = ssd.detect(&refs, 0.5, 100).unwrap();
    let faces: Vec<(&FloatImage, _)> = dets
        .iter()
        .zip(&frames)
        .flat_map(|(d, frame)| d.iter().map(move |d| (frame, d.bbox)))
        .collect();
    let lms = marks.detect(&faces).unwrap();
    let chips: Vec<FloatImage> = faces
        .iter()
        .zip(&lms)
        .map(|((img, _), lm)| dlib_chip(img, &lm.points))
        .collect();
    let cycle = |n: usize| -> Vec<usize> { (0..n).map(|i| i % faces.len()).collect() };

    let mut g = c.benchmark_group("detect_640x480");
    g.sample_size(10);
    let detect_batches: &[usize] = if gpu { &[1, 8, 32] } else { &[1, 8] };
    for &batch in detect_batches {
        let input: Vec<&FloatImage> = (0..batch).map(|i| &frames[i % frames.len()]).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("ssd", batch), &input, |b, x| {
            b.iter(|| ssd.detect(x, 0.5, 100).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("tiny416", batch), &input, |b, x| {
            b.iter(|| tiny.detect(x, 416, 0.5).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("per_face");
    g.sample_size(10);
    let face_batches: &[usize] = if gpu {
        &[1, 8, 32, 64, 256]
    } else {
        &[1, 8, 32]
    };
    for &batch in face_batches {
        let idx = cycle(batch);
        g.throughput(Throughput::Elements(batch as u64));
        let boxes: Vec<(&FloatImage, _)> = idx.iter().map(|&i| faces[i]).collect();
        g.bench_with_input(BenchmarkId::new("landmarks", batch), &boxes, |b, x| {
            b.iter(|| marks.detect(x).unwrap())
        });
        let align_in: Vec<(&FloatImage, &[[f32; 2]])> = idx
            .iter()
            .map(|&i| (faces[i].0, lms[i].points.as_slice()))
            .collect();
        g.bench_with_input(BenchmarkId::new("align", batch), &align_in, |b, x| {
            b.iter(|| {
                x.iter()
                    .map(|(img, pts)| {
                        let chip = dlib_chip(img, pts);
                        let quality = assess(img, pts, &chip);
                        (chip, quality)
                    })
                    .collect::<Vec<_>>()
            })
        });
        let chip_in: Vec<&FloatImage> = idx.iter().map(|&i| &chips[i]).collect();
        g.bench_with_input(BenchmarkId::new("embed", batch), &chip_in, |b, x| {
            b.iter(|| recog.embed(x).unwrap())
        });
    }
    g.finish();

    let pipeline = FacePipeline::load(&model_dir(), &device, PipelineConfig::default()).unwrap();
    let rgb: Vec<_> = (1..=6).map(frame).collect();
    let mut g = c.benchmark_group("pipeline_640x480");
    g.sample_size(10);
    let frame_batches: &[usize] = if gpu { &[1, 4, 32] } else { &[1, 4] };
    for &batch in frame_batches {
        let input: Vec<_> = (0..batch).map(|i| rgb[i % rgb.len()].clone()).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("ssd", batch), &input, |b, x| {
            b.iter(|| pipeline.process(x).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
