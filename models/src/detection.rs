//! Face boxes, intersection-over-union and greedy non-maximum suppression shared by the detectors.

use serde::{Deserialize, Serialize};

/// An axis-aligned box in pixel coordinates of the original image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub width: f32,
    /// Height.
    pub height: f32,
}

impl FaceBox {
    /// Right edge.
    pub fn right(&self) -> f32 {
        self.x + self.width
    }

    /// Bottom edge.
    pub fn bottom(&self) -> f32 {
        self.y + self.height
    }

    /// Area (zero for degenerate boxes).
    pub fn area(&self) -> f32 {
        self.width.max(0.0) * self.height.max(0.0)
    }

    /// Intersection over union with `other`; zero when either box is empty.
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let w = (self.right().min(other.right()) - self.x.max(other.x)).max(0.0);
        let h = (self.bottom().min(other.bottom()) - self.y.max(other.y)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// face-api's `clipAtImageBorders`: clipped to the image, then every field floored.
    /// Returns `None` when nothing of the box is inside the image.
    pub fn clip_floor(&self, img_w: usize, img_h: usize) -> Option<(usize, usize, usize, usize)> {
        let x = self.x.max(0.0);
        let y = self.y.max(0.0);
        let w = (self.right() - x).min(img_w as f32 - x).floor();
        let h = (self.bottom() - y).min(img_h as f32 - y).floor();
        let (x, y) = (x.floor(), y.floor());
        if w <= 0.0 || h <= 0.0 || x >= img_w as f32 || y >= img_h as f32 {
            return None;
        }
        let (x, y) = (x as usize, y as usize);
        Some((
            x,
            y,
            (w as usize).min(img_w - x),
            (h as usize).min(img_h - y),
        ))
    }
}

/// A detected face: its box and the detector's confidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The face box in original image pixels.
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// Detector confidence in `0..=1`.
    pub score: f32,
}

/// Greedy non-maximum suppression: candidates scoring above `score_threshold`, best first,
/// each kept unless it overlaps a kept one by more than `iou_threshold`; at most `max_out`.
pub fn non_max_suppression(
    candidates: &[Detection],
    iou_threshold: f32,
    score_threshold: f32,
    max_out: usize,
) -> Vec<Detection> {
    let mut order: Vec<&Detection> = candidates
        .iter()
        .filter(|d| d.score > score_threshold)
        .collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for cand in order {
        if kept.len() >= max_out {
            break;
        }
        if kept.iter().all(|k| k.bbox.iou(&cand.bbox) <= iou_threshold) {
            kept.push(*cand);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, s: f32, score: f32) -> Detection {
        Detection {
            bbox: FaceBox {
                x,
                y,
                width: s,
                height: s,
            },
            score,
        }
    }

    #[test]
    fn iou_of_half_overlap() {
        let a = FaceBox {
            x: 0.0,
            y: 0.0,
            width: 2.0,
            height: 2.0,
        };
        let b = FaceBox {
            x: 1.0,
            y: 0.0,
            width: 2.0,
            height: 2.0,
        };
        assert!((a.iou(&b) - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(a.iou(&FaceBox { x: 5.0, ..b }), 0.0);
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_all_disjoint() {
        let dets = [
            det(0.0, 0.0, 10.0, 0.6),
            det(1.0, 1.0, 10.0, 0.9),
            det(50.0, 50.0, 10.0, 0.7),
            det(80.0, 0.0, 5.0, 0.2),
        ];
        let kept = non_max_suppression(&dets, 0.5, 0.5, 10);
        assert_eq!(kept, vec![dets[1], dets[2]]);
        assert_eq!(non_max_suppression(&dets, 0.5, 0.5, 1), vec![dets[1]]);
    }

    #[test]
    fn clip_floor_matches_face_api() {
        let b = FaceBox {
            x: -3.5,
            y: 10.7,
            width: 20.2,
            height: 100.0,
        };
        assert_eq!(b.clip_floor(50, 60), Some((0, 10, 16, 49)));
        assert_eq!(FaceBox { x: 70.0, ..b }.clip_floor(50, 60), None);
    }
}
