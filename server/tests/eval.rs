//! `rollcall eval` on real photos: one person's photos are recognised, another enrolled person
//! is not confused with them, and every stranger in the group photos comes back unknown.

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn eval_reports_accuracy_on_real_photos() {
    let dir = tempfile::tempdir().unwrap();
    let link = |person: &str, src: std::path::PathBuf| {
        let d = dir.path().join(person);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&src, d.join(src.file_name().unwrap())).unwrap();
    };
    let people = common::assets().join("face_recognition/test_images");
    for name in [
        "obama.jpg",
        "obama2.jpg",
        "obama3.jpg",
        "obama_partial_face.jpg",
        "obama_partial_face2.jpg",
    ] {
        link("obama", people.join(name));
    }
    link("biden", people.join("biden.jpg"));
    for i in 1..=6 {
        link(
            "_unknown",
            common::model_dir().join(format!("demo/sample{i}.jpg")),
        );
    }

    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["eval", "--json"])
        .arg(dir.path())
        .env("ROLLCALL_MODEL_DIR", common::model_dir())
        .env_remove("ROLLCALL_MATCH_THRESHOLD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 4 probes of obama plus every face of the 6 group photos (22).
    assert!(report["probes"].as_u64().unwrap() >= 24, "{report}");
    assert_eq!(report["enrolled"], 2);
    assert_eq!(report["false_accepts"], 0, "{report}");
    assert_eq!(report["false_rejects"], 0, "{report}");
    assert_eq!(report["accuracy"], 1.0);
    assert_eq!(
        report["threshold"].as_f64().unwrap() as f32,
        rollcall_server::DEFAULT_MATCH_THRESHOLD
    );
    let best = report["best_threshold"].as_f64().unwrap();
    assert!((0.85..0.97).contains(&best), "best threshold {best}");
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0);

    let table = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .arg("eval")
        .arg(dir.path())
        .env("ROLLCALL_MODEL_DIR", common::model_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("obama/obama2.jpg") && text.contains("accuracy 1.000"),
        "{text}"
    );
}

#[test]
fn eval_pairs_mode_reports_rates_and_a_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let people = common::assets().join("face_recognition/test_images");
    for (person, names) in [
        ("obama", &["obama.jpg", "obama2.jpg", "obama3.jpg"][..]),
        ("biden", &["biden.jpg"][..]),
    ] {
        let d = dir.path().join(person);
        std::fs::create_dir_all(&d).unwrap();
        for n in names {
            std::fs::copy(people.join(n), d.join(n)).unwrap();
        }
    }
    let unknown = dir.path().join("_unknown");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::copy(
        common::model_dir().join("demo/sample1.jpg"),
        unknown.join("sample1.jpg"),
    )
    .unwrap();
    let svg = dir.path().join("roc.svg");

    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["eval", "--pairs", "--json", "--target-fmr", "0.01", "--svg"])
        .arg(&svg)
        .arg(dir.path())
        .env("ROLLCALL_MODEL_DIR", common::model_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 3 obama photos: 3 genuine pairs; identities: obama, biden, 3 strangers of sample1.
    assert_eq!(report["genuine"]["pairs"], 3, "{report}");
    assert!(
        report["impostor"]["pairs"].as_u64().unwrap() >= 3 * 4 + 3,
        "{report}"
    );
    assert!(
        report["genuine"]["min"].as_f64().unwrap() > report["impostor"]["max"].as_f64().unwrap()
    );
    let chosen = &report["threshold_for_target"];
    assert!(chosen["false_match_rate"].as_f64().unwrap() <= 0.01);
    assert_eq!(chosen["false_non_match_rate"], 0.0, "{report}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("false match rate") && plot.contains("<polyline")
    );
}
