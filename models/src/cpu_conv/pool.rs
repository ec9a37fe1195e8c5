//! Max pooling on the CPU: one pass over each plane, windows clipped at the borders (the same
//! as padding with −∞, TF's `same` pooling), planes in parallel. Replaces a padded copy of the
//! input plus Candle's generic pooling loop.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::input;
use crate::layers::same_padding;

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
    /// TensorFlow's pooling of `h × w` planes: `same` (windows clipped at the borders, output
    /// `ceil(side / stride)`) or `valid` (whole windows only); `None` when a `valid` window
    /// does not fit.
    pub fn for_input(
        kernel: usize,
        stride: usize,
        same: bool,
        (h, w): (usize, usize),
    ) -> Option<Self> {
        if same {
            let (top, _) = same_padding(h, kernel, stride);
            let (left, _) = same_padding(w, kernel, stride);
            return Some(Self {
                kernel,
                stride,
                top_left: (top, left),
                out: (h.div_ceil(stride), w.div_ceil(stride)),
            });
        }
        (h >= kernel && w >= kernel).then(|| Self {
            kernel,
            stride,
            top_left: (0, 0),
            out: ((h - kernel) / stride + 1, (w - kernel) / stride + 1),
        })
    }

    /// The input rows `y0..y1` that output row `oy` pools, for an input `h` rows high.
    pub(super) fn window_rows(&self, oy: usize, h: usize) -> (usize, usize) {
        let top = self.top_left.0;
        (
            (oy * self.stride).saturating_sub(top),
            (oy * self.stride + self.kernel - top).min(h),
        )
    }

    /// Pools one `h × w` plane into `dst` (`out_h × out_w`): each output row is the
    /// element-wise max of its window rows' horizontal maxima.
    fn plane(&self, src: &[f32], (h, w): (usize, usize), dst: &mut [f32]) {
        for (oy, out) in dst.chunks_exact_mut(self.out.1).enumerate() {
            let (y0, y1) = self.window_rows(oy, h);
            for (i, row) in src[y0 * w..y1 * w].chunks_exact(w).enumerate() {
                self.row(row, out, i == 0);
            }
        }
    }

    /// Horizontal window maxima of `row` into `out`: stored when `first`, else max-ed in.
    pub(super) fn row(&self, row: &[f32], out: &mut [f32], first: bool) {
        if first {
            self.row_with::<true>(row, out);
        } else {
            self.row_with::<false>(row, out);
        }
    }

    /// [`Self::row`] for one value of `first`. Every output is stored unconditionally from
    /// `a > b` selects (not `f32::max`, whose NaN rule costs a blend, nor a store only where
    /// the value grew, which does not vectorise), with plain pairs for Tiny's 2-wide windows.
    #[inline(always)]
    fn row_with<const FIRST: bool>(&self, row: &[f32], out: &mut [f32]) {
        let max2 = |a: f32, b: f32| if b > a { b } else { a };
        let keep = |o: &mut f32, m: f32| *o = if FIRST { m } else { max2(*o, m) };
        match (self.kernel, self.stride, self.top_left.1) {
            (2, 2, 0) => {
                let pairs = row.chunks_exact(2);
                let tail = pairs.remainder().first().copied();
                let n = pairs.len().min(out.len());
                for (o, p) in out[..n].iter_mut().zip(pairs) {
                    keep(o, max2(p[0], p[1]));
                }
                if let (Some(o), Some(v)) = (out.get_mut(n), tail) {
                    keep(o, v);
                }
            }
            (2, 1, 0) => {
                let n = (row.len() - 1).min(out.len());
                for (o, p) in out[..n].iter_mut().zip(row.windows(2)) {
                    keep(o, max2(p[0], p[1]));
                }
                if let Some(o) = out.get_mut(n) {
                    keep(o, row[row.len() - 1]);
                }
            }
            (k, s, left) => {
                for (ox, o) in out.iter_mut().enumerate() {
                    let x0 = (ox * s).saturating_sub(left);
                    let x1 = (ox * s + k - left).min(row.len());
                    let window = &row[x0..x1];
                    keep(o, window[1..].iter().fold(window[0], |m, &v| max2(m, v)));
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
