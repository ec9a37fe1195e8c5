//! The whole pipeline on real photos: the photos of one person match each other, and none of
//! them matches another person or any face of the face-api group photos, at the documented
//! default threshold. Batched processing equals one image at a time.

use candle_core::Device;
use common::{demo_photo_rgb, max_abs_diff, model_dir, person_photo_rgb, OBAMA};
use image::RgbImage;
use rollcall_models::pipeline::{
    similarity, Face, FacePipeline, PipelineConfig, DEFAULT_MATCH_THRESHOLD,
};

mod common;

fn largest(faces: &[Face]) -> &Face {
    faces
        .iter()
        .max_by(|a, b| a.detection.bbox.area().total_cmp(&b.detection.bbox.area()))
        .expect("a face")
}

#[test]
fn one_person_matches_and_strangers_do_not() {
    let pipeline =
        FacePipeline::load(&model_dir(), &Device::Cpu, PipelineConfig::default()).unwrap();
    let mut images: Vec<RgbImage> = OBAMA.iter().map(|n| person_photo_rgb(n)).collect();
    images.push(person_photo_rgb("biden.jpg"));
    let groups: Vec<RgbImage> = (1..=6)
        .map(|i| demo_photo_rgb(&format!("sample{i}.jpg")))
        .collect();
    images.extend(groups);
    let out = pipeline.process(&images).unwrap().faces;

    let obama: Vec<&Face> = out[..OBAMA.len()].iter().map(|f| largest(f)).collect();
    let biden = largest(&out[OBAMA.len()]);
    let strangers: Vec<&Face> = out[OBAMA.len() + 1..].iter().flatten().collect();
    assert!(
        strangers.len() >= 20,
        "the group photos hold 22 faces, found {}",
        strangers.len()
    );
    for f in obama.iter().chain([&biden]) {
        assert!(f.quality.acceptable, "{:?}", f.quality);
        let norm: f32 = f.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    let t = DEFAULT_MATCH_THRESHOLD;
    let mut genuine = f32::MAX;
    for (i, a) in obama.iter().enumerate() {
        for (j, b) in obama.iter().enumerate().skip(i + 1) {
            let s = similarity(&a.embedding, &b.embedding);
            eprintln!("{} ~ {}: {s:.4}", OBAMA[i], OBAMA[j]);
            genuine = genuine.min(s);
            assert!(
                s >= t,
                "{} and {} are the same person but similarity {s:.4} < {t}",
                OBAMA[i],
                OBAMA[j]
            );
        }
    }
    let mut impostor = f32::MIN;
    for (i, a) in obama.iter().enumerate() {
        let s = similarity(&a.embedding, &biden.embedding);
        impostor = impostor.max(s);
        assert!(s < t, "{} matched biden.jpg at {s:.4}", OBAMA[i]);
        for (k, g) in strangers.iter().enumerate() {
            let s = similarity(&a.embedding, &g.embedding);
            impostor = impostor.max(s);
            assert!(s < t, "{} matched group face {k} at {s:.4}", OBAMA[i]);
        }
    }
    eprintln!("lowest genuine similarity {genuine:.4}, highest impostor similarity {impostor:.4}, threshold {t}");
}

#[test]
fn batched_pipeline_equals_single_images() {
    let pipeline =
        FacePipeline::load(&model_dir(), &Device::Cpu, PipelineConfig::default()).unwrap();
    let images = vec![
        person_photo_rgb("obama.jpg"),
        demo_photo_rgb("sample2.jpg"),
        person_photo_rgb("biden.jpg"),
    ];
    let batched = pipeline.process(&images).unwrap().faces;
    for (img, together) in images.iter().zip(&batched) {
        let alone = pipeline
            .process(std::slice::from_ref(img))
            .unwrap()
            .faces
            .remove(0);
        assert_eq!(alone.len(), together.len());
        for (a, b) in alone.iter().zip(together) {
            assert!(a.detection.bbox.iou(&b.detection.bbox) > 0.999);
            let diff = max_abs_diff(&a.embedding, &b.embedding);
            assert!(diff < 1e-4, "embedding differs by {diff}");
        }
    }
}
