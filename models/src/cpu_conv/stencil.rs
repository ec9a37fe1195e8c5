//! The direct kernels for convolutions with few taps per output (the 3-channel first layers,
//! depthwise filters): each output is `bias + Σ_t w_t · src_t[x]` over a handful of source
//! rows. [`row`] accumulates in registers for `C` output channels × `W` pixels at a time and
//! stores once; [`depthwise_row`] computes a single channel's row (register-blocked with
//! AVX-512, otherwise one streaming pass per tap) from padded planes; [`depthwise3`] computes a
//! 3×3 filter's rows with AVX-512 straight from the unpadded plane, its borders masked.
//!
//! On x86-64 [`row`] also has AVX-512 and AVX2 + FMA builds, and [`depthwise_row`] its AVX-512
//! [`row`] and an AVX2 + FMA streaming build; the widest the CPU has is picked at run time.
//! Elsewhere the baseline build runs.

use std::mem::MaybeUninit;

use super::Activation;

/// One output row for `C` channels: `outs[c][x] = act(bias[c] + Σ_t
/// weights[t][c] · srcs[t][x])` for `x < width`. Every source row holds at least `width`
/// samples; `weights` has one entry per source row. Every one of those outputs is written, so
/// the rows need not be initialised.
pub fn row<const C: usize, const W: usize>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    (outs, width): (&mut [&mut [MaybeUninit<f32>]; C], usize),
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature `avx512::row` is compiled for.
        unsafe { avx512::row::<C>(srcs, weights, bias, activation, (outs, width)) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `row_fma` is compiled for.
        unsafe { row_fma::<C, W>(srcs, weights, bias, activation, (outs, width)) };
        return;
    }
    walk::<W>(width, |x, n| match n {
        1 => block::<C, 1, false>(srcs, weights, bias, activation, outs, x),
        8 => block::<C, 8, false>(srcs, weights, bias, activation, outs, x),
        _ => block::<C, W, false>(srcs, weights, bias, activation, outs, x),
    });
}

/// One filter's taps as the weights of a single-channel [`row`].
pub fn single_channel(taps: &[f32]) -> Vec<[f32; 1]> {
    taps.iter().map(|&w| [w]).collect()
}

/// [`row`] with AVX2 + FMA: blocks of `W` (a multiple of 8) and 8 pixels in vector
/// registers, then single pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_fma<const C: usize, const W: usize>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    (outs, width): (&mut [&mut [MaybeUninit<f32>]; C], usize),
) {
    walk::<W>(width, |x, n| match n {
        1 => block::<C, 1, true>(srcs, weights, bias, activation, outs, x),
        8 => avx::block::<C, 8>(srcs, weights, bias, activation, outs, x),
        _ => avx::block::<C, W>(srcs, weights, bias, activation, outs, x),
    });
}

/// The register block written with AVX2 + FMA intrinsics (the compiler does not vectorise
/// the portable [`block`] across pixels reliably).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::Activation;

    /// `C × N` outputs starting at pixel `x`, `N` a multiple of 8.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const C: usize, const N: usize>(
        srcs: &[&[f32]],
        weights: &[[f32; C]],
        bias: [f32; C],
        activation: Activation,
        outs: &mut [&mut [MaybeUninit<f32>]; C],
        x: usize,
    ) {
        let mut acc: [[__m256; 4]; C] = bias.map(|b| [_mm256_set1_ps(b); 4]);
        let vectors = N / 8;
        debug_assert!(N.is_multiple_of(8) && vectors <= 4);
        for (src, w) in srcs.iter().zip(weights) {
            let s = &src[x..x + N];
            let mut vals = [_mm256_setzero_ps(); 4];
            for (v, val) in vals.iter_mut().enumerate().take(vectors) {
                // SAFETY: `s` holds `N` = 8 · `vectors` samples.
                *val = unsafe { _mm256_loadu_ps(s.as_ptr().add(8 * v)) };
            }
            for (acc, &w) in acc.iter_mut().zip(w) {
                let w = _mm256_set1_ps(w);
                for (a, &val) in acc.iter_mut().zip(&vals).take(vectors) {
                    *a = _mm256_fmadd_ps(w, val, *a);
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            let dst = &mut outs[c][x..][..N];
            for (v, &a) in acc.iter().enumerate().take(vectors) {
                // SAFETY: `dst` holds `N` = 8 · `vectors` samples.
                unsafe {
                    _mm256_storeu_ps(
                        dst.as_mut_ptr().cast::<f32>().add(8 * v),
                        activate(a, activation),
                    )
                };
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn activate(a: __m256, activation: Activation) -> __m256 {
        let zero = _mm256_setzero_ps();
        match activation {
            Activation::Identity => a,
            Activation::Relu => _mm256_max_ps(a, zero),
            Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(a, zero), _mm256_set1_ps(6.0)),
            Activation::Leaky(slope) => _mm256_max_ps(a, _mm256_mul_ps(a, _mm256_set1_ps(slope))),
        }
    }
}

/// [`row`] with AVX-512: blocks of 32 pixels in two registers per channel, then 16 at a
/// time with the last block masked, so no pixel takes a scalar path.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{Activation, LOADS};

    /// [`super::row`] for CPUs with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row<const C: usize>(
        srcs: &[&[f32]],
        weights: &[[f32; C]],
        bias: [f32; C],
        activation: Activation,
        (outs, width): (&mut [&mut [MaybeUninit<f32>]; C], usize),
    ) {
        let mut x = 0;
        while x + 32 <= width {
            block::<C, 2>(srcs, weights, bias, activation, outs, x, 16);
            x += 32;
        }
        while x < width {
            let n = (width - x).min(16);
            block::<C, 1>(srcs, weights, bias, activation, outs, x, n);
            x += n;
        }
    }

    /// `C × (16 · (V - 1) + last)` outputs from pixel `x`: `V` registers per channel, the last
    /// one holding `last` (1..=16) pixels.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn block<const C: usize, const V: usize>(
        srcs: &[&[f32]],
        weights: &[[f32; C]],
        bias: [f32; C],
        activation: Activation,
        outs: &mut [&mut [MaybeUninit<f32>]; C],
        x: usize,
        last: usize,
    ) {
        let n = 16 * (V - 1) + last;
        let mask = |v: usize| -> __mmask16 {
            if v + 1 < V {
                !0
            } else {
                ((1u32 << last) - 1) as __mmask16
            }
        };
        let mut acc: [[__m512; V]; C] = bias.map(|b| [_mm512_set1_ps(b); V]);
        for (src, w) in srcs.iter().zip(weights) {
            let s = &src[x..x + n];
            // SAFETY: `s` holds `n` samples; masked-off lanes are not read.
            let vals: [__m512; V] = std::array::from_fn(|v| unsafe {
                _mm512_maskz_loadu_ps(mask(v), s.as_ptr().add(16 * v))
            });
            for (acc, &w) in acc.iter_mut().zip(w) {
                let w = _mm512_set1_ps(w);
                for (a, &val) in acc.iter_mut().zip(&vals) {
                    *a = _mm512_fmadd_ps(w, val, *a);
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            let dst = &mut outs[c][x..][..n];
            for (v, &a) in acc.iter().enumerate() {
                // SAFETY: `dst` holds `n` samples; masked-off lanes are not written.
                unsafe {
                    _mm512_mask_storeu_ps(
                        dst.as_mut_ptr().cast::<f32>().add(16 * v),
                        mask(v),
                        activation.apply_512(a),
                    )
                };
            }
        }
    }

    /// [`super::depthwise3`]'s operands.
    pub(super) struct Depthwise3<'a> {
        pub plane: &'a super::Plane<'a>,
        pub columns: &'a super::ColumnMasks,
        pub taps: &'a [f32; 9],
        pub bias: f32,
        pub activation: Activation,
    }

    impl Depthwise3<'_> {
        /// Output rows `oy0..` into `out`, column block by column block (a block's masks serve
        /// all its rows; a block whose samples all lie inside the rows loads without them,
        /// measured 8–12% faster at stride 1), four rows of a block at a time (each input row
        /// loaded once for the output rows it feeds; at stride 1 measured 10–60% faster than
        /// two, six no better than four; at stride 2 ~15% faster than two, eight slower:
        /// its sixteen accumulators leave too few registers); the input through a ReLU when
        /// `RELU`.
        ///
        /// # Safety
        /// The CPU has AVX-512F, and the masks were made for the plane's row width.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn rows<const S: usize, const RELU: bool>(
            &self,
            out: &mut [MaybeUninit<f32>],
            oy0: usize,
        ) {
            let mut taps = [_mm512_setzero_ps(); 9];
            for (t, &w) in taps.iter_mut().zip(self.taps) {
                *t = _mm512_set1_ps(w);
            }
            let columns = self.columns;
            let ow = columns.widths.1;
            let rows = out.len() / ow;
            let blocks = columns
                .loads
                .iter()
                .zip(&columns.stores)
                .zip(&columns.inside);
            for (b, ((masks, stores), &inside)) in blocks.enumerate() {
                let x = 32 * b;
                // The input column tap `kx = 0` reads for the block's first output.
                let x0 = (x * S) as isize - columns.left as isize;
                let block = Block {
                    taps: &taps,
                    masks,
                    stores,
                    x,
                    x0,
                };
                // SAFETY: as for this function.
                unsafe {
                    if inside {
                        self.block_rows::<S, RELU, true>(&block, out, (oy0, rows));
                    } else {
                        self.block_rows::<S, RELU, false>(&block, out, (oy0, rows));
                    }
                }
            }
        }

        /// Every row of one column block, four or two at a time.
        ///
        /// # Safety
        /// As for [`Self::rows`].
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn block_rows<const S: usize, const RELU: bool, const FULL: bool>(
            &self,
            block: &Block,
            out: &mut [MaybeUninit<f32>],
            (oy0, rows): (usize, usize),
        ) {
            let mut r = 0;
            while r + 4 <= rows {
                // SAFETY: as for this function.
                unsafe { self.block::<S, RELU, 4, FULL>(block, out, (oy0, r)) };
                r += 4;
            }
            while r + 2 <= rows {
                // SAFETY: as for this function.
                unsafe { self.block::<S, RELU, 2, FULL>(block, out, (oy0, r)) };
                r += 2;
            }
            if r < rows {
                // SAFETY: as for this function.
                unsafe { self.block::<S, RELU, 1, FULL>(block, out, (oy0, r)) };
            }
        }

        /// Rows `r0..r0 + R` of one column block: input row `i` of the block's rows, read once
        /// as the three tap columns' vectors ([`Block::columns`]), adds into every output row
        /// `r` it is tap row `i - r · S` of (at stride 1 two rows share two of their three
        /// input rows, at stride 2 one).
        ///
        /// # Safety
        /// As for [`Self::rows`].
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn block<const S: usize, const RELU: bool, const R: usize, const FULL: bool>(
            &self,
            block: &Block,
            out: &mut [MaybeUninit<f32>],
            (oy0, r0): (usize, usize),
        ) {
            let (h, w) = self.plane.size;
            let ow = self.columns.widths.1;
            let y0 = ((oy0 + r0) * S) as isize - self.plane.top as isize;
            let mut acc = [[_mm512_set1_ps(self.bias); 2]; R];
            for i in 0..(R - 1) * S + 3 {
                let y = y0 + i as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                // SAFETY: row `y` lies inside the plane.
                let src = unsafe { self.plane.data.as_ptr().add(y as usize * w) };
                // SAFETY: as for this function.
                let columns = unsafe { block.columns::<S, RELU, FULL>(src) };
                for (kx, v) in columns.iter().enumerate() {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        if let Some(ky) = i.checked_sub(r * S).filter(|&ky| ky < 3) {
                            for (a, &v) in acc.iter_mut().zip(v) {
                                *a = _mm512_fmadd_ps(block.taps[ky * 3 + kx], v, *a);
                            }
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    // SAFETY: the mask enables the block's outputs of row `r0 + r`.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            out.as_mut_ptr()
                                .cast::<f32>()
                                .wrapping_add((r0 + r) * ow + block.x + 16 * j),
                            block.stores[j],
                            self.activation.apply_512(a),
                        )
                    };
                }
            }
        }
    }

    /// One column block of [`Depthwise3::rows`]: the broadcast taps, the block's load and store
    /// masks, its first output column `x` and the input column `x0` tap `kx = 0` reads there.
    struct Block<'a> {
        taps: &'a [__m512; 9],
        masks: &'a [u16; LOADS],
        stores: &'a [u16; 2],
        x: usize,
        x0: isize,
    }

    impl Block<'_> {
        /// The samples of the row at `src` that tap column `kx` multiplies for the block's 32
        /// outputs, as `[kx][16-output half]`, through a ReLU when `RELU`. At stride 1 each is
        /// a load from column `x0 + kx`. At stride 2 five loads from `x0` cover the 65 samples
        /// the block reads; two permutes per half keep their even and odd samples (for taps
        /// 0 and 1), and tap 2's, the evens one further on, are the evens shifted a lane. Two
        /// loads and a permute per tap column and half measured 20–30% slower (twice the
        /// loads, and more permutes); splitting the rows into even and odd columns in memory
        /// first, then loading those, about 2× slower (the loads right after the stores).
        ///
        /// # Safety
        /// The CPU has AVX-512F and the block's masks enable only samples inside the row.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn columns<const S: usize, const RELU: bool, const FULL: bool>(
            &self,
            src: *const f32,
        ) -> [[__m512; 2]; 3] {
            let load = |q: usize, c: isize| {
                let at = src.wrapping_offset(self.x0 + c);
                // SAFETY: masked-off lanes are not read; the rest lie inside the row (all of
                // them where `FULL`).
                let v = unsafe {
                    if FULL {
                        _mm512_loadu_ps(at)
                    } else {
                        _mm512_maskz_loadu_ps(self.masks[q], at)
                    }
                };
                if RELU {
                    _mm512_max_ps(v, _mm512_setzero_ps())
                } else {
                    v
                }
            };
            if S == 1 {
                return std::array::from_fn(|kx| {
                    std::array::from_fn(|j| load(2 * kx + j, (kx + 16 * j) as isize))
                });
            }
            let l: [__m512; 5] = std::array::from_fn(|q| load(q, 16 * q as isize));
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            let e = [
                _mm512_permutex2var_ps(l[0], evens, l[1]),
                _mm512_permutex2var_ps(l[2], evens, l[3]),
            ];
            let o = [
                _mm512_permutex2var_ps(l[0], odds, l[1]),
                _mm512_permutex2var_ps(l[2], odds, l[3]),
            ];
            // Lanes 1..16 of one, then lane 0 of the next.
            let shift = |lo: __m512, hi: __m512| {
                _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(
                    _mm512_castps_si512(hi),
                    _mm512_castps_si512(lo),
                ))
            };
            [e, o, [shift(e[0], e[1]), shift(e[1], l[4])]]
        }
    }
}

/// Walks a row of `width` pixels in blocks of `W`, then 8: `block(x, n)` for each. A tail of
/// fewer than 8 pixels is one more block of 8 ending at the row's end, overlapping the one
/// before it (a block's outputs depend only on its sources, so the overlap is written twice
/// with the same values), or single pixels in a row narrower than 8.
#[inline(always)]
fn walk<const W: usize>(width: usize, mut block: impl FnMut(usize, usize)) {
    let mut x = 0;
    for n in [W, 8] {
        while x + n <= width {
            block(x, n);
            x += n;
        }
    }
    if x < width && width >= 8 {
        block(width - 8, 8);
    } else {
        (x..width).for_each(|x| block(x, 1));
    }
}

/// `C × N` outputs starting at pixel `x`, held in registers across every tap.
#[inline(always)]
fn block<const C: usize, const N: usize, const FMA: bool>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    outs: &mut [&mut [MaybeUninit<f32>]; C],
    x: usize,
) {
    let mut acc = bias.map(|b| [b; N]);
    for (src, w) in srcs.iter().zip(weights) {
        let s: &[f32; N] = src[x..]
            .first_chunk()
            .expect("every source row spans the output row");
        for (acc, &w) in acc.iter_mut().zip(w) {
            for (a, &v) in acc.iter_mut().zip(s) {
                // Without the FMA feature `mul_add` would be a libm call.
                *a = if FMA { w.mul_add(v, *a) } else { w * v + *a };
            }
        }
    }
    for (c, acc) in acc.iter_mut().enumerate() {
        activation.apply(acc);
        for (o, &a) in outs[c][x..][..N].iter_mut().zip(acc.iter()) {
            o.write(a);
        }
    }
}

/// One single-channel output row (a depthwise filter's): `out = act(bias + Σ_t taps[t] ·
/// srcs[t])`. With AVX-512 this is the register-blocked [`row`] (its masked tails cost
/// nothing; measured 38 against 26 GFLOP/s streaming, 3×3, 128 channels at 128², stride 1).
/// Otherwise it streams, one pass over the row per tap (the row stays in L1): with AVX2 this
/// measured ~20% faster than [`row`], whose tails go pixel by pixel.
pub fn depthwise_row(
    srcs: &[&[f32]],
    taps: &[f32],
    bias: f32,
    activation: Activation,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: `[f32; 1]` has the layout of `f32`, so the slice is the same memory.
        let weights: &[[f32; 1]] =
            unsafe { std::slice::from_raw_parts(taps.as_ptr().cast(), taps.len()) };
        let width = out.len();
        // SAFETY: the CPU has the feature `avx512::row` is compiled for, which writes only
        // samples.
        unsafe {
            let out = super::as_room(out);
            avx512::row::<1>(srcs, weights, [bias], activation, (&mut [out], width))
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `stream_row_fma` is compiled for.
        unsafe { stream_row_fma(srcs, taps, bias, activation, out) };
        return;
    }
    stream_row_with::<false>(srcs, taps, bias, activation, out);
}

/// One input plane as [`depthwise3`] reads it: `size.0 × size.1` samples, zero outside them,
/// with `top` zero rows above, read through a ReLU when `relu`.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    /// The samples, row-major.
    pub data: &'a [f32],
    /// `(h, w)`.
    pub size: (usize, usize),
    /// Zero rows above the samples.
    pub top: usize,
    /// Whether the samples go through a ReLU on their way in.
    pub relu: bool,
}

/// The most loads a [`depthwise3`] column block makes per input row: two per tap column at
/// stride 1, five at stride 2.
const LOADS: usize = 6;

/// Where [`depthwise3`]'s column blocks read and write, worked out once per layer and input
/// size: per block of 32 outputs, the mask of each of its loads from an input row (its lanes
/// inside the row: the rows' left and right borders), and the block's store masks.
#[derive(Debug, Clone)]
pub struct ColumnMasks {
    stride: usize,
    /// Input and output row widths.
    widths: (usize, usize),
    /// Zero columns left of the samples.
    left: usize,
    loads: Vec<[u16; LOADS]>,
    stores: Vec<[u16; 2]>,
    /// Per block: whether every sample it loads lies inside the rows (all its load masks full).
    inside: Vec<bool>,
}

impl ColumnMasks {
    /// Masks for input rows `w` wide, `left` zero columns in front, output rows `ow` wide.
    pub fn new(stride: usize, (w, ow): (usize, usize), left: usize) -> Self {
        // The lanes of 16 samples from column `c` inside the row.
        let lanes = |c: isize| -> u16 {
            let first = (-c).clamp(0, 16) as u32;
            let end = (w as isize - c).clamp(0, 16) as u32;
            (((1u32 << end) - 1) & !((1u32 << first) - 1)) as u16
        };
        // Where each load starts, from the column tap `kx = 0` reads for the block's first
        // output (as `Block::columns` makes them).
        let offsets: Vec<isize> = if stride == 1 {
            (0..3).flat_map(|kx| [kx, kx + 16]).collect()
        } else {
            (0..5).map(|q| 16 * q).collect()
        };
        let (mut loads, mut stores, mut inside) = (Vec::new(), Vec::new(), Vec::new());
        for x in (0..ow).step_by(32) {
            let n = (ow - x).min(32);
            let x0 = (x * stride) as isize - left as isize;
            let mut masks = [0; LOADS];
            for (m, &offset) in masks.iter_mut().zip(&offsets) {
                *m = lanes(x0 + offset);
            }
            inside.push(masks[..offsets.len()].iter().all(|&m| m == u16::MAX));
            loads.push(masks);
            stores.push(std::array::from_fn(|j| {
                ((1u32 << n.saturating_sub(16 * j).min(16)) - 1) as u16
            }));
        }
        Self {
            stride,
            widths: (w, ow),
            left,
            loads,
            stores,
            inside,
        }
    }
}

/// Whether [`depthwise3`] runs a 3×3 filter at `stride` on this CPU: AVX-512F, stride 1 or 2.
pub fn depthwise3_runs(stride: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return stride == 1 || stride == 2;
    }
    let _ = stride;
    false
}

/// One channel's 3×3 depthwise filter read straight from its unpadded input plane, where
/// [`depthwise3_runs`]: output rows `oy0..oy0 + out.len() / ow`, where output `(y, x)` is
/// `act(bias + Σ taps[ky * 3 + kx] · in(y · stride + ky - top, x · stride + kx - left))` and
/// `in` is zero outside the plane. Four rows × 32 pixels at a time in eight registers; the
/// borders and the last block are masked loads (no padded copy of the plane is made), and at
/// stride 2 each input row's 65 samples for a block are five loads, split into the three
/// tap columns' samples with permutes.
/// Every sample of `out` is written, so it need not be initialised.
pub fn depthwise3(
    plane: &Plane,
    columns: &ColumnMasks,
    (taps, bias, activation): (&[f32; 9], f32, Activation),
    (out, oy0): (&mut [MaybeUninit<f32>], usize),
) {
    let (h, w) = plane.size;
    let (cw, ow) = columns.widths;
    assert!(
        depthwise3_runs(columns.stride),
        "depthwise3 does not run here"
    );
    assert!(plane.data.len() >= h * w && cw == w && out.len().is_multiple_of(ow));
    #[cfg(target_arch = "x86_64")]
    {
        let kernel = avx512::Depthwise3 {
            plane,
            columns,
            taps,
            bias,
            activation,
        };
        // SAFETY: the CPU has AVX-512F (`depthwise3_runs`); the masks, made for rows `w`
        // wide (checked above), enable only samples inside the plane's rows and outputs
        // inside `out`'s.
        unsafe {
            match (columns.stride, plane.relu) {
                (1, false) => kernel.rows::<1, false>(out, oy0),
                (1, true) => kernel.rows::<1, true>(out, oy0),
                (_, false) => kernel.rows::<2, false>(out, oy0),
                (_, true) => kernel.rows::<2, true>(out, oy0),
            }
        }
    }
}

/// [`depthwise_row`]'s streaming body compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stream_row_fma(
    srcs: &[&[f32]],
    taps: &[f32],
    bias: f32,
    activation: Activation,
    out: &mut [f32],
) {
    stream_row_with::<true>(srcs, taps, bias, activation, out);
}

/// [`depthwise_row`] by streaming, one pass over the row per tap, with or without fused
/// multiply-adds.
#[inline(always)]
fn stream_row_with<const FMA: bool>(
    srcs: &[&[f32]],
    taps: &[f32],
    bias: f32,
    activation: Activation,
    out: &mut [f32],
) {
    out.fill(bias);
    let width = out.len();
    for (src, &w) in srcs.iter().zip(taps) {
        for (o, &v) in out.iter_mut().zip(&src[..width]) {
            *o = if FMA { w.mul_add(v, *o) } else { w * v + *o };
        }
    }
    activation.apply(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable build of [`row`], whatever the CPU has.
    fn portable_row<const C: usize>(
        srcs: &[&[f32]],
        weights: &[[f32; C]],
        bias: [f32; C],
        activation: Activation,
        (outs, width): (&mut [&mut [MaybeUninit<f32>]; C], usize),
    ) {
        walk::<16>(width, |x, n| match n {
            1 => block::<C, 1, false>(srcs, weights, bias, activation, outs, x),
            8 => block::<C, 8, false>(srcs, weights, bias, activation, outs, x),
            _ => block::<C, 16, false>(srcs, weights, bias, activation, outs, x),
        });
    }

    /// Every SIMD build of [`row`] this CPU can run equals the portable one, on widths that
    /// leave every kind of tail (the dispatch itself picks only the widest build).
    #[test]
    fn every_row_build_equals_the_portable_build() {
        let taps = 27;
        let src: Vec<Vec<f32>> = (0..taps)
            .map(|t| {
                (0..80)
                    .map(|i| ((i * 7 + t * 13) % 17) as f32 - 8.0)
                    .collect()
            })
            .collect();
        let srcs: Vec<&[f32]> = src.iter().map(|r| r.as_slice()).collect();
        let weights: Vec<[f32; 4]> = (0..taps)
            .map(|t| std::array::from_fn(|c| ((t * 5 + c * 3) % 11) as f32 * 0.25 - 1.0))
            .collect();
        let bias = [0.5, -1.0, 2.0, 0.0];
        type Out<'a, 'b> = (&'a mut [&'b mut [MaybeUninit<f32>]; 4], usize);
        type Row = fn(&[&[f32]], &[[f32; 4]], [f32; 4], Activation, Out);
        // The four channels' rows of `buf` (`4 × width`).
        fn rows(buf: &mut [f32], width: usize) -> [&mut [MaybeUninit<f32>]; 4] {
            // SAFETY: the builds write only samples.
            let room = unsafe { crate::cpu_conv::as_room(buf) };
            let mut rows = room.chunks_exact_mut(width);
            std::array::from_fn(|_| rows.next().expect("four rows"))
        }
        let mut builds: Vec<(&str, Row)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                builds.push(("avx2", |s, w, b, a, o| unsafe {
                    row_fma::<4, 16>(s, w, b, a, o)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                builds.push(("avx512", |s, w, b, a, o| unsafe {
                    avx512::row::<4>(s, w, b, a, o)
                }));
            }
        }
        for width in [1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 79] {
            let mut want = vec![0f32; 4 * width];
            portable_row(
                &srcs,
                &weights,
                bias,
                Activation::Leaky(0.1),
                (&mut rows(&mut want, width), width),
            );
            for (name, build) in &builds {
                let mut got = vec![f32::NAN; 4 * width];
                build(
                    &srcs,
                    &weights,
                    bias,
                    Activation::Leaky(0.1),
                    // A NaN left unwritten fails the comparison below.
                    (&mut rows(&mut got, width), width),
                );
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                        "{name} width {width}"
                    );
                }
            }
        }
    }
}
