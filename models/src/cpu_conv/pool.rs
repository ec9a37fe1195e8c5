//! Max pooling on the CPU: one pass over each plane, windows clipped at the borders (the same
//! as padding with −∞, TF's `same` pooling), planes in parallel. Replaces a padded copy of the
//! input plus Candle's generic pooling loop.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::input;

/// `kernel × kernel` max pooling with `stride`, `top`/`left` padding rows and columns and an
/// output of `out_h × out_w` per plane.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Padding rows above and columns left of the input.
    pub top_left: (usize, usize),
    /// Output rows and columns.
    pub out: (usize, usize),
}

impl MaxPool {
    /// Pools one `h × w` plane into `dst` (`out_h × out_w`).
    fn plane(&self, src: &[f32], (h, w): (usize, usize), dst: &mut [f32]) {
        let (k, s) = (self.kernel as isize, self.stride as isize);
        let (top, left) = (self.top_left.0 as isize, self.top_left.1 as isize);
        let ow = self.out.1;
        for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
            out.fill(f32::NEG_INFINITY);
            let y0 = oy as isize * s - top;
            for y in y0.max(0)..(y0 + k).min(h as isize) {
                let row = &src[y as usize * w..][..w];
                for (ox, o) in out.iter_mut().enumerate() {
                    let x0 = ox as isize * s - left;
                    let window = &row[x0.max(0) as usize..(x0 + k).min(w as isize) as usize];
                    *o = window.iter().fold(*o, |m, &v| m.max(v));
                }
            }
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "rollcall-max-pool"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = input(storage, layout)?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.out;
        if oh == 0 || ow == 0 || h == 0 || w == 0 {
            candle_core::bail!("max pooling of an empty {h}x{w} plane to {oh}x{ow}");
        }
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| self.plane(src, (h, w), dst));
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}
