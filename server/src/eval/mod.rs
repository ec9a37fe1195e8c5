//! `rollcall eval`: accuracy of the pipeline on a folder of identities `DIR/<person>/<image>`.
//! The first image of each person (in name order) is enrolled; every other image is a probe
//! (its largest face); every face of `DIR/_unknown/*` is a stranger that must come back unknown.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rollcall_models::device::default_max_batch;
use rollcall_models::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};
use rollcall_models::pipeline::{similarity, Face, FacePipeline};
use serde::Serialize;

pub mod pairs;

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The folder cannot be read.
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The folder holds no enrolled person.
    #[error("{0} holds no person folder with an image")]
    Empty(PathBuf),
    /// An image cannot be decoded or the networks failed.
    #[error("{0}: {1}")]
    Model(PathBuf, rollcall_models::ModelError),
}

/// Name of the folder of people who are never enrolled.
pub const UNKNOWN_DIR: &str = "_unknown";

/// One probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Image path relative to DIR.
    pub image: String,
    /// Who it shows (`None` for a stranger).
    pub expected: Option<String>,
    /// Best-matching enrolled person and the similarity, if any face was found.
    pub best: Option<(String, f32)>,
}

/// The result of an evaluation run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Threshold the answers were judged at.
    pub threshold: f32,
    /// Correct answers / probes.
    pub accuracy: f64,
    /// Probes matched to the wrong person, or strangers matched to anyone.
    pub false_accepts: usize,
    /// Enrolled people not recognised (below threshold, or no face found).
    pub false_rejects: usize,
    /// Number of probes.
    pub probes: usize,
    /// People enrolled.
    pub enrolled: usize,
    /// People whose enrolment image had no face.
    pub not_enrolled: Vec<String>,
    /// Threshold with the best accuracy in a sweep (the middle of the best range).
    pub best_threshold: f32,
    /// Accuracy at `best_threshold`.
    pub best_accuracy: f64,
    /// All images, decode to embedding, per second.
    pub images_per_s: f64,
    /// Every probe.
    pub details: Vec<Probe>,
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Io(dir.to_owned(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "webp"
                )
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

fn largest(faces: &[Face]) -> Option<&Face> {
    faces
        .iter()
        .max_by(|a, b| a.detection.bbox.area().total_cmp(&b.detection.bbox.area()))
}

/// An image and the faces the pipeline found in it.
pub type ImageFaces = (PathBuf, Vec<Face>);

/// The images of a folder of identities, with the faces the pipeline found in each.
pub struct Dataset {
    /// The folder.
    pub dir: PathBuf,
    /// Each person's images in name order, with the faces of each image.
    pub people: Vec<(String, Vec<ImageFaces>)>,
    /// Images of `DIR/_unknown/`, with their faces.
    pub strangers: Vec<ImageFaces>,
    /// All images, decode to embedding, per second.
    pub images_per_s: f64,
}

impl Dataset {
    /// Reads `dir` and runs every image through `pipeline`, as many images at a time as the
    /// server batches on its device ([`default_max_batch`]).
    pub fn load(pipeline: &FacePipeline, dir: &Path) -> Result<Self, EvalError> {
        let mut people: Vec<(String, Vec<PathBuf>)> = Vec::new();
        let mut strangers: Vec<PathBuf> = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EvalError::Io(dir.to_owned(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for folder in entries {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let images = images_in(&folder)?;
            if name == UNKNOWN_DIR {
                strangers = images;
            } else if !images.is_empty() {
                people.push((name, images));
            }
        }
        if people.is_empty() {
            return Err(EvalError::Empty(dir.to_owned()));
        }
        let all: Vec<&PathBuf> = people
            .iter()
            .flat_map(|(_, imgs)| imgs.iter())
            .chain(strangers.iter())
            .collect();
        let started = Instant::now();
        let mut faces: Vec<Vec<Face>> = Vec::with_capacity(all.len());
        for chunk in all.chunks(default_max_batch(pipeline.device())) {
            let mut images = Vec::with_capacity(chunk.len());
            for path in chunk {
                let bytes = std::fs::read(path).map_err(|e| EvalError::Io((*path).clone(), e))?;
                images.push(
                    decode_rgb(&bytes, DEFAULT_MAX_PIXELS)
                        .map_err(|e| EvalError::Model((*path).clone(), e))?,
                );
            }
            faces.extend(
                pipeline
                    .process(&images)
                    .map_err(|e| EvalError::Model(dir.to_owned(), e))?
                    .faces,
            );
        }
        let images_per_s = all.len() as f64 / started.elapsed().as_secs_f64();
        let mut faces = faces.into_iter();
        let mut take = |paths: Vec<PathBuf>| -> Vec<ImageFaces> {
            paths
                .into_iter()
                .map(|p| (p, faces.next().unwrap_or_default()))
                .collect()
        };
        let people = people
            .into_iter()
            .map(|(name, paths)| (name, take(paths)))
            .collect();
        let strangers = take(strangers);
        Ok(Self {
            dir: dir.to_owned(),
            people,
            strangers,
            images_per_s,
        })
    }

    /// `path` relative to the dataset folder, for display.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// Identification accuracy at `threshold` (see the module documentation).
pub fn evaluate(data: &Dataset, threshold: f32) -> EvalReport {
    let mut gallery: Vec<(String, Vec<f32>)> = Vec::new();
    let mut not_enrolled = Vec::new();
    let mut probes: Vec<(String, Option<String>, Vec<f32>)> = Vec::new();
    let mut faceless: Vec<Probe> = Vec::new();
    for (person, images) in &data.people {
        for (i, (path, faces)) in images.iter().enumerate() {
            match (i, largest(faces)) {
                (0, Some(f)) => gallery.push((person.clone(), f.embedding.clone())),
                (0, None) => not_enrolled.push(person.clone()),
                (_, Some(f)) => probes.push((
                    data.relative(path),
                    Some(person.clone()),
                    f.embedding.clone(),
                )),
                (_, None) => faceless.push(Probe {
                    image: data.relative(path),
                    expected: Some(person.clone()),
                    best: None,
                }),
            }
        }
    }
    for (path, faces) in &data.strangers {
        for f in faces {
            probes.push((data.relative(path), None, f.embedding.clone()));
        }
    }

    let mut details: Vec<Probe> = probes
        .into_iter()
        .map(|(image, expected, emb)| {
            let best = gallery
                .iter()
                .map(|(name, g)| (name.clone(), similarity(&emb, g)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            Probe {
                image,
                expected,
                best,
            }
        })
        .collect();
    details.extend(faceless);

    let (accuracy, false_accepts, false_rejects) = score(&details, threshold);
    let (best_threshold, best_accuracy) = sweep(&details);
    EvalReport {
        threshold,
        accuracy,
        false_accepts,
        false_rejects,
        probes: details.len(),
        enrolled: gallery.len(),
        not_enrolled,
        best_threshold,
        best_accuracy,
        images_per_s: data.images_per_s,
        details,
    }
}

/// Accuracy, false accepts and false rejects at `threshold`.
fn score(probes: &[Probe], threshold: f32) -> (f64, usize, usize) {
    let (mut correct, mut fa, mut fr) = (0, 0, 0);
    for p in probes {
        let matched = p
            .best
            .as_ref()
            .filter(|(_, s)| *s >= threshold)
            .map(|(n, _)| n);
        match (&p.expected, matched) {
            (Some(e), Some(m)) if e == m => correct += 1,
            (None, None) => correct += 1,
            (_, Some(_)) => fa += 1,
            (Some(_), None) => fr += 1,
        }
    }
    let accuracy = if probes.is_empty() {
        1.0
    } else {
        correct as f64 / probes.len() as f64
    };
    (accuracy, fa, fr)
}

/// The middle of the widest best-accuracy range of thresholds in `0.000..=1.000`.
fn sweep(probes: &[Probe]) -> (f32, f64) {
    let results: Vec<(f32, f64)> = (0..=1000)
        .map(|i| i as f32 / 1000.0)
        .map(|t| (t, score(probes, t).0))
        .collect();
    let best = results.iter().map(|r| r.1).fold(0.0, f64::max);
    let hits: Vec<f32> = results
        .iter()
        .filter(|r| r.1 == best)
        .map(|r| r.0)
        .collect();
    (hits[hits.len() / 2], best)
}

impl EvalReport {
    /// A readable table of the probes and the summary.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<48} {:<16} {:<16} {:>10}  result\n",
            "image", "expected", "best match", "similarity"
        );
        for p in &self.details {
            let matched = p
                .best
                .as_ref()
                .filter(|(_, s)| *s >= self.threshold)
                .map(|(n, _)| n.as_str());
            let ok = match (&p.expected, matched) {
                (Some(e), Some(m)) => e == m,
                (None, None) => true,
                _ => false,
            };
            let (name, sim) = p
                .best
                .clone()
                .map(|(n, s)| (n, format!("{s:.3}")))
                .unwrap_or(("(no face)".into(), "-".into()));
            out += &format!(
                "{:<48} {:<16} {:<16} {:>10}  {}\n",
                p.image,
                p.expected.as_deref().unwrap_or("(unknown)"),
                name,
                sim,
                if ok { "ok" } else { "WRONG" }
            );
        }
        out += &format!(
            "\nenrolled {} people; {} probes; threshold {:.3}: accuracy {:.3}, false accepts {}, false rejects {}\n\
             best threshold {:.3} (accuracy {:.3}); {:.2} images/s\n",
            self.enrolled, self.probes, self.threshold, self.accuracy, self.false_accepts, self.false_rejects,
            self.best_threshold, self.best_accuracy, self.images_per_s
        );
        if !self.not_enrolled.is_empty() {
            out += &format!(
                "no face in the enrolment image of: {}\n",
                self.not_enrolled.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(expected: Option<&str>, best: Option<(&str, f32)>) -> Probe {
        Probe {
            image: "x".into(),
            expected: expected.map(Into::into),
            best: best.map(|(n, s)| (n.into(), s)),
        }
    }

    #[test]
    fn scoring_counts_false_accepts_and_rejects() {
        let probes = [
            probe(Some("a"), Some(("a", 0.95))),
            probe(Some("a"), Some(("b", 0.95))),
            probe(Some("a"), Some(("a", 0.5))),
            probe(None, Some(("a", 0.95))),
            probe(None, Some(("a", 0.5))),
            probe(Some("b"), None),
        ];
        assert_eq!(score(&probes, 0.9), (2.0 / 6.0, 2, 2));
        let (t, acc) = sweep(&probes);
        assert!(acc >= 2.0 / 6.0 && (0.0..=1.0).contains(&t));
    }
}
