//! Perceptual hash of a face: the difference hash (dHash) of the face's square crop, 64 bits.
//! Near-identical crops (a still person in front of a still camera) hash alike, so the hash
//! keys the cache of recent recognition results.

use image::imageops::{self, FilterType};
use image::RgbImage;
use rollcall_models::detection::FaceBox;

/// dHash of the square around `face` in `frame`: the crop is reduced to 9×8 grey pixels and
/// each bit says whether a pixel is brighter than its right neighbour.
pub fn face_hash(frame: &RgbImage, face: FaceBox) -> u64 {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let side = face.width.max(face.height).max(1.0);
    let x0 = (face.x + face.width / 2.0 - side / 2.0).clamp(0.0, (w - 1.0).max(0.0));
    let y0 = (face.y + face.height / 2.0 - side / 2.0).clamp(0.0, (h - 1.0).max(0.0));
    let cw = side.min(w - x0).max(1.0) as u32;
    let ch = side.min(h - y0).max(1.0) as u32;
    let crop = imageops::crop_imm(frame, x0 as u32, y0 as u32, cw, ch).to_image();
    let grey = imageops::grayscale(&crop);
    let small = imageops::resize(&grey, 9, 8, FilterType::Triangle);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let bit = small.get_pixel(x, y)[0] > small.get_pixel(x + 1, y)[0];
            hash = (hash << 1) | u64::from(bit);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(shift: u8) -> RgbImage {
        RgbImage::from_fn(200, 150, |x, y| {
            let v = ((x * 7 + y * 3) % 251) as u8;
            image::Rgb([v.wrapping_add(shift), v, v / 2])
        })
    }

    #[test]
    fn same_face_same_hash_other_face_other_hash() {
        let face = FaceBox {
            x: 40.0,
            y: 30.0,
            width: 60.0,
            height: 70.0,
        };
        let elsewhere = FaceBox { x: 120.0, ..face };
        assert_eq!(face_hash(&frame(0), face), face_hash(&frame(0), face));
        assert_ne!(face_hash(&frame(0), face), face_hash(&frame(0), elsewhere));
        // A box hanging over the border is clipped, not a panic.
        let border = FaceBox {
            x: 190.0,
            y: 140.0,
            ..face
        };
        face_hash(&frame(0), border);
    }
}
