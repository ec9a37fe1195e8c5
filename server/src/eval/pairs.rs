//! Pairs mode of `rollcall eval`: genuine and impostor similarity distributions, false match
//! and false non-match rates per threshold (a text ROC and an SVG plot), and the threshold that
//! reaches a requested false match rate. Each person folder is one identity (the largest face
//! of each image); each face of `DIR/_unknown/` is an identity of its own.

use std::fmt::Write as _;

use rollcall_models::pipeline::similarity;
use serde::Serialize;

use super::{largest, Dataset};

/// Summary of one set of similarities.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    /// Number of pairs.
    pub pairs: usize,
    /// Lowest similarity.
    pub min: f32,
    /// Mean similarity.
    pub mean: f32,
    /// Highest similarity.
    pub max: f32,
    /// Pairs per bin of width 0.05 from 0.0 to 1.0 (bin `i` holds `[i/20, (i+1)/20)`).
    pub histogram: Vec<usize>,
}

impl Distribution {
    fn of(values: &[f32]) -> Self {
        let mut histogram = vec![0; 20];
        for v in values {
            histogram[((v.clamp(0.0, 0.9999) * 20.0) as usize).min(19)] += 1;
        }
        let n = values.len().max(1) as f32;
        Self {
            pairs: values.len(),
            min: values.iter().copied().fold(f32::INFINITY, f32::min),
            mean: values.iter().sum::<f32>() / n,
            max: values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            histogram,
        }
    }
}

/// Error rates at one threshold.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RatePoint {
    /// Cosine-similarity threshold.
    pub threshold: f32,
    /// Share of impostor pairs at or above the threshold.
    pub false_match_rate: f64,
    /// Share of genuine pairs below the threshold.
    pub false_non_match_rate: f64,
}

/// The result of a pairs run.
#[derive(Debug, Clone, Serialize)]
pub struct PairsReport {
    /// Same-identity pairs.
    pub genuine: Distribution,
    /// Different-identity pairs.
    pub impostor: Distribution,
    /// Rates from threshold 0.50 to 1.00 in steps of 0.01.
    pub rates: Vec<RatePoint>,
    /// The false match rate asked for.
    pub target_false_match_rate: f64,
    /// The lowest threshold whose false match rate is at most the target, with its rates.
    pub threshold_for_target: Option<RatePoint>,
}

fn rates(genuine: &[f32], impostor: &[f32], threshold: f32) -> RatePoint {
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    RatePoint {
        threshold,
        false_match_rate: share(
            impostor.iter().filter(|&&s| s >= threshold).count(),
            impostor.len(),
        ),
        false_non_match_rate: share(
            genuine.iter().filter(|&&s| s < threshold).count(),
            genuine.len(),
        ),
    }
}

/// Scores every pair of faces in `data`.
pub fn evaluate_pairs(data: &Dataset, target_false_match_rate: f64) -> PairsReport {
    let mut identities: Vec<Vec<&[f32]>> = data
        .people
        .iter()
        .map(|(_, images)| {
            images
                .iter()
                .filter_map(|(_, faces)| largest(faces))
                .map(|f| f.embedding.as_slice())
                .collect()
        })
        .collect();
    identities.extend(
        data.strangers
            .iter()
            .flat_map(|(_, faces)| faces.iter().map(|f| vec![f.embedding.as_slice()])),
    );

    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for (i, a) in identities.iter().enumerate() {
        for (k, x) in a.iter().enumerate() {
            genuine.extend(a[k + 1..].iter().map(|y| similarity(x, y)));
            for b in &identities[i + 1..] {
                impostor.extend(b.iter().map(|y| similarity(x, y)));
            }
        }
    }
    let steps: Vec<RatePoint> = (0..=500)
        .map(|i| rates(&genuine, &impostor, 0.5 + i as f32 / 1000.0))
        .collect();
    PairsReport {
        genuine: Distribution::of(&genuine),
        impostor: Distribution::of(&impostor),
        rates: steps.iter().step_by(10).copied().collect(),
        target_false_match_rate,
        threshold_for_target: steps
            .iter()
            .find(|p| p.false_match_rate <= target_false_match_rate)
            .copied(),
    }
}

impl PairsReport {
    /// Distributions, a text ROC and the recommended threshold.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (name, d) in [("genuine", &self.genuine), ("impostor", &self.impostor)] {
            let _ = writeln!(
                out,
                "{name:<9} {:>6} pairs  min {:.3}  mean {:.3}  max {:.3}",
                d.pairs, d.min, d.mean, d.max
            );
        }
        let _ = writeln!(out, "\nsimilarity   genuine  impostor");
        for i in (0..20)
            .rev()
            .filter(|&i| self.genuine.histogram[i] + self.impostor.histogram[i] > 0)
        {
            let _ = writeln!(
                out,
                "{:.2}-{:.2}   {:>7}  {:>8}",
                i as f32 / 20.0,
                (i + 1) as f32 / 20.0,
                self.genuine.histogram[i],
                self.impostor.histogram[i]
            );
        }
        let _ = writeln!(out, "\nthreshold  false match rate  false non-match rate");
        for p in &self.rates {
            let _ = writeln!(
                out,
                "{:>9.2}  {:>16.4}  {:>20.4}",
                p.threshold, p.false_match_rate, p.false_non_match_rate
            );
        }
        match self.threshold_for_target {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "\nthreshold for a false match rate <= {}: {:.3} (false match rate {:.4}, false non-match rate {:.4})",
                    self.target_false_match_rate, p.threshold, p.false_match_rate, p.false_non_match_rate
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nno threshold up to 1.0 reaches a false match rate <= {}",
                    self.target_false_match_rate
                );
            }
        }
        out
    }

    /// An SVG plot of both error rates against the threshold, the target threshold marked.
    pub fn svg(&self) -> String {
        let (w, h, left, bottom) = (640.0, 400.0, 60.0, 50.0);
        let x = |t: f32| left + (f64::from(t) - 0.5) / 0.5 * (w - left - 20.0);
        let y = |r: f64| (h - bottom) - r * (h - bottom - 20.0);
        let line = |f: fn(&RatePoint) -> f64| {
            self.rates
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.threshold), y(f(p))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n\
             <line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{0}\" stroke=\"black\"/>\n\
             <text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\">threshold (cosine similarity)</text>\n\
             <text x=\"15\" y=\"{4}\" transform=\"rotate(-90 15 {4})\" text-anchor=\"middle\">error rate</text>\n",
            h - bottom,
            w - 20.0,
            (w + left) / 2.0,
            h - 10.0,
            (h - bottom) / 2.0
        );
        for i in 0..=5 {
            let t = 0.5 + i as f32 * 0.1;
            let r = i as f64 * 0.2;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.1}</text>",
                x(t),
                h - bottom + 16.0
            );
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{r:.1}</text>",
                left - 6.0,
                y(r) + 4.0
            );
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>",
            line(|p| p.false_match_rate)
        );
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"2\" points=\"{}\"/>",
            line(|p| p.false_non_match_rate)
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"36\" fill=\"#c0392b\">false match rate</text>",
            left + 10.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"52\" fill=\"#2471a3\">false non-match rate</text>",
            left + 10.0
        );
        if let Some(p) = self.threshold_for_target {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" y1=\"20\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"gray\" stroke-dasharray=\"4\"/>\n\
                 <text x=\"{2:.1}\" y=\"70\">{3:.3}</text>",
                x(p.threshold),
                h - bottom,
                x(p.threshold) + 4.0,
                p.threshold
            );
        }
        svg + "</svg>\n"
    }
}
