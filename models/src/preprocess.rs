//! Image preprocessing with TensorFlow's exact semantics (padding to square, legacy bilinear
//! resize, integer crops), so the Candle networks see the same inputs as face-api's.

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// An RGB image with `f32` samples in `0..=255`, stored row-major as HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` samples.
    pub data: Vec<f32>,
}

impl FloatImage {
    /// Converts an 8-bit RGB image.
    pub fn from_rgb(img: &RgbImage) -> Self {
        Self {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw().iter().map(|&v| f32::from(v)).collect(),
        }
    }

    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height * 3],
        }
    }

    /// Sample at `(x, y, channel)`.
    #[inline]
    pub fn at(&self, x: usize, y: usize, c: usize) -> f32 {
        self.data[(y * self.width + x) * 3 + c]
    }

    /// The rectangle `[x, x + w) × [y, y + h)`, which must lie inside the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Self {
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }

    /// face-api's `padToSquare`: zero-pads the shorter side; `centered` splits the padding
    /// (the rounded half after the image, the rest before), otherwise all of it goes after.
    pub fn pad_to_square(&self, centered: bool) -> Self {
        let (w, h) = (self.width, self.height);
        if w == h {
            return self.clone();
        }
        let (side, (ox, oy)) = self.square(centered);
        let mut out = Self::zeros(side, side);
        for row in 0..h {
            let src = row * w * 3;
            let dst = ((row + oy) * side + ox) * 3;
            out.data[dst..dst + w * 3].copy_from_slice(&self.data[src..src + w * 3]);
        }
        out
    }

    /// The side of [`Self::pad_to_square`]'s square and where the image starts in it.
    fn square(&self, centered: bool) -> (usize, (usize, usize)) {
        let (w, h) = (self.width, self.height);
        let diff = w.abs_diff(h);
        let after = if centered {
            (diff as f64 * 0.5).round() as usize
        } else {
            diff
        };
        let before = diff - after;
        let origin = if h > w { (before, 0) } else { (0, before) };
        (w.max(h), origin)
    }

    /// `tf.image.resizeBilinear(x, [h, w], alignCorners = false, halfPixelCenters = false)`.
    pub fn resize_bilinear(&self, out_w: usize, out_h: usize) -> Self {
        if out_w == self.width && out_h == self.height {
            return self.clone();
        }
        let sy = self.height as f32 / out_h as f32;
        let sx = self.width as f32 / out_w as f32;
        // Per output column: where its left and right source pixels start in a row, and the
        // weight of the right one.
        let cols: Vec<(usize, usize, f32)> = (0..out_w)
            .map(|c| {
                let f = sx * c as f32;
                let lo = f.floor() as usize;
                let hi = (f.ceil() as usize).min(self.width - 1);
                (lo * 3, hi * 3, f - lo as f32)
            })
            .collect();
        let row_len = self.width * 3;
        let source_row = |y: usize| &self.data[y * row_len..(y + 1) * row_len];
        let mut out = Self::zeros(out_w, out_h);
        for (r, dst) in out.data.chunks_exact_mut(out_w * 3).enumerate() {
            let f = sy * r as f32;
            let top = f.floor() as usize;
            let rf = f - top as f32;
            let (top, bottom) = (
                source_row(top),
                source_row((f.ceil() as usize).min(self.height - 1)),
            );
            for (px, &(left, right, cf)) in dst.chunks_exact_mut(3).zip(&cols) {
                let (tl, tr) = (&top[left..left + 3], &top[right..right + 3]);
                let (bl, br) = (&bottom[left..left + 3], &bottom[right..right + 3]);
                for ch in 0..3 {
                    let t = tl[ch] + (tr[ch] - tl[ch]) * cf;
                    let b = bl[ch] + (br[ch] - bl[ch]) * cf;
                    px[ch] = t + (b - t) * rf;
                }
            }
        }
        out
    }
}

/// Stacks same-sized images into one NCHW `f32` tensor of shape `[n, 3, h, w]`.
pub fn to_batch_tensor(images: &[FloatImage], device: &Device) -> Result<Tensor> {
    let (w, h) = images
        .first()
        .map(|i| (i.width, i.height))
        .unwrap_or((0, 0));
    // Written plane by plane, so the network gets NCHW without a strided copy.
    let plane = w * h;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (img, dst) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        assert_eq!(
            (img.width, img.height),
            (w, h),
            "batched images must share one size"
        );
        let (r, gb) = dst.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        let pixels = img.data.chunks_exact(3).zip(r).zip(g).zip(b);
        for (((px, r), g), b) in pixels {
            (*r, *g, *b) = (px[0], px[1], px[2]);
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

/// face-api's `padToSquare(centered)` then `resizeBilinear` to `size × size` of each image,
/// stacked into one NCHW tensor `[n, 3, size, size]` (what every network takes) in one pass:
/// each output pixel reads the original image, the padding as zeros, with the arithmetic of
/// [`FloatImage::resize_bilinear`], so the samples are bit-identical to [`to_batch_tensor`] of
/// the padded, resized images, without writing either. Images and rows run in parallel; an
/// empty image is an error.
pub fn to_square_batch_tensor(
    images: &[&FloatImage],
    centered: bool,
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    if let Some(img) = images.iter().find(|i| i.width == 0 || i.height == 0) {
        return Err(ModelError::InvalidInput(format!(
            "empty image {}x{}",
            img.width, img.height
        )));
    }
    let plane = size * size;
    let mut data = vec![0f32; images.len() * 3 * plane];
    data.par_chunks_exact_mut(3 * plane)
        .zip(images)
        .for_each(|(dst, img)| SquareResize::new(img, centered, size).planes(dst));
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, size, size),
        device,
    )?)
}

/// One image padded to a square and resized, as [`to_square_batch_tensor`] reads it.
struct SquareResize<'a> {
    img: &'a FloatImage,
    size: usize,
    /// The square's side and where the image starts in it.
    side: usize,
    origin: (usize, usize),
}

impl<'a> SquareResize<'a> {
    fn new(img: &'a FloatImage, centered: bool, size: usize) -> Self {
        let (side, origin) = img.square(centered);
        Self {
            img,
            size,
            side,
            origin,
        }
    }

    /// Where sample `i` of the square's side `axis` (0: x, 1: y) lies in the image.
    fn inside(&self, i: usize, axis: usize) -> Option<usize> {
        let (origin, len) = match axis {
            0 => (self.origin.0, self.img.width),
            _ => (self.origin.1, self.img.height),
        };
        i.checked_sub(origin).filter(|&i| i < len)
    }

    /// The source pair and weight of output position `i` along `axis`, as
    /// [`FloatImage::resize_bilinear`] computes them on the square.
    fn taps(&self, i: usize, axis: usize) -> (Option<usize>, Option<usize>, f32) {
        let f = self.side as f32 / self.size as f32 * i as f32;
        let lo = f.floor() as usize;
        let hi = (f.ceil() as usize).min(self.side - 1);
        (self.inside(lo, axis), self.inside(hi, axis), f - lo as f32)
    }

    /// Writes the three `size × size` planes into `dst`, rows in parallel.
    fn planes(&self, dst: &mut [f32]) {
        let plane = self.size * self.size;
        let cols: Vec<_> = (0..self.size).map(|c| self.taps(c, 0)).collect();
        let row_len = self.img.width * 3;
        let source_row = |y: Option<usize>| y.map(|y| &self.img.data[y * row_len..][..row_len]);
        let pixel = |row: Option<&[f32]>, x: Option<usize>| match (row, x) {
            (Some(row), Some(x)) => [row[3 * x], row[3 * x + 1], row[3 * x + 2]],
            _ => [0.0; 3],
        };
        let (r, gb) = dst.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        r.par_chunks_exact_mut(self.size)
            .zip(g.par_chunks_exact_mut(self.size))
            .zip(b.par_chunks_exact_mut(self.size))
            .enumerate()
            .for_each(|(y, ((r, g), b))| {
                let (top, bottom, rf) = self.taps(y, 1);
                let (top, bottom) = (source_row(top), source_row(bottom));
                for (x, &(left, right, cf)) in cols.iter().enumerate() {
                    let (tl, tr) = (pixel(top, left), pixel(top, right));
                    let (bl, br) = (pixel(bottom, left), pixel(bottom, right));
                    let v: [f32; 3] = std::array::from_fn(|ch| {
                        let t = tl[ch] + (tr[ch] - tl[ch]) * cf;
                        let b = bl[ch] + (br[ch] - bl[ch]) * cf;
                        t + (b - t) * rf
                    });
                    (r[x], g[x], b[x]) = (v[0], v[1], v[2]);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> FloatImage {
        let data = (0..w * h * 3).map(|i| i as f32).collect();
        FloatImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn pad_to_square_places_padding_like_face_api() {
        let img = ramp(2, 5);
        let bottom_right = img.pad_to_square(false);
        assert_eq!((bottom_right.width, bottom_right.height), (5, 5));
        assert_eq!(bottom_right.at(0, 0, 0), img.at(0, 0, 0));
        assert_eq!(bottom_right.at(4, 0, 0), 0.0);
        let centered = img.pad_to_square(true);
        // diff 3: round(1.5) = 2 columns after, 1 before.
        assert_eq!(centered.at(0, 0, 1), 0.0);
        assert_eq!(centered.at(1, 2, 1), img.at(0, 2, 1));
        assert_eq!(centered.at(3, 0, 0), 0.0);
    }

    #[test]
    fn bilinear_resize_follows_tf_legacy_sampling() {
        let img = ramp(4, 4);
        let half = img.resize_bilinear(2, 2);
        // Legacy mode samples source (0,0) and (2,2): no averaging of neighbours.
        assert_eq!(half.at(1, 1, 2), img.at(2, 2, 2));
        let up = img.resize_bilinear(8, 8);
        assert_eq!(up.at(1, 0, 0), (img.at(0, 0, 0) + img.at(1, 0, 0)) / 2.0);
        assert_eq!(up.at(7, 7, 0), img.at(3, 3, 0));
    }

    /// The one-pass square batch equals padding, resizing and stacking, to the bit, for
    /// landscape, portrait and square images, centred or not, down- and upscaled.
    #[test]
    fn square_batch_equals_pad_resize_and_stack() {
        let images = [ramp(37, 23), ramp(20, 41), ramp(16, 16), ramp(5, 3)];
        for size in [8, 16, 29] {
            for centered in [false, true] {
                let refs: Vec<&FloatImage> = images.iter().collect();
                let got = to_square_batch_tensor(&refs, centered, size, &Device::Cpu).unwrap();
                let want: Vec<FloatImage> = images
                    .iter()
                    .map(|img| img.pad_to_square(centered).resize_bilinear(size, size))
                    .collect();
                let want = to_batch_tensor(&want, &Device::Cpu).unwrap();
                let (got, want): (Vec<f32>, Vec<f32>) = (
                    got.flatten_all().unwrap().to_vec1().unwrap(),
                    want.flatten_all().unwrap().to_vec1().unwrap(),
                );
                assert_eq!(got, want, "size {size}, centred {centered}");
            }
        }
    }

    #[test]
    fn batch_tensor_is_nchw() {
        let t = to_batch_tensor(&[ramp(3, 2), ramp(3, 2)], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 2, 3]);
        let v: Vec<f32> = t
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![1.0, 4.0, 7.0, 10.0, 13.0, 16.0]);
    }
}
