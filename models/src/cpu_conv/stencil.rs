//! The direct kernel for convolutions with few taps per output (depthwise filters, the
//! 3-channel first layers): each output is `bias + Σ_t w_t · src_t[x]` over a handful of
//! source rows, accumulated in registers for `C` output channels × `W` pixels at a time and
//! stored once.
//!
//! On x86-64 the kernel is compiled a second time for AVX2 + FMA and that build is picked at
//! run time when the CPU has them; elsewhere the baseline build runs.

use super::Activation;

/// One output row for `C` channels: `out[c * out_stride + x] = act(bias[c] + Σ_t
/// weights[t][c] · srcs[t][x])` for `x < width`. Every source row holds at least `width`
/// samples; `weights` has one entry per source row.
pub fn row<const C: usize, const W: usize>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    (out, out_stride, width): (&mut [f32], usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features `row_fma` is compiled for.
        unsafe { row_fma::<C, W>(srcs, weights, bias, activation, (out, out_stride, width)) };
        return;
    }
    row_with::<C, W, false>(srcs, weights, bias, activation, (out, out_stride, width));
}

/// One filter's taps as the weights of a single-channel [`row`].
pub fn single_channel(taps: &[f32]) -> Vec<[f32; 1]> {
    taps.iter().map(|&w| [w]).collect()
}

/// [`row`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_fma<const C: usize, const W: usize>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    out: (&mut [f32], usize, usize),
) {
    row_with::<C, W, true>(srcs, weights, bias, activation, out);
}

/// The row in blocks of `W` pixels, then 8, then single pixels.
#[inline(always)]
fn row_with<const C: usize, const W: usize, const FMA: bool>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    (out, out_stride, width): (&mut [f32], usize, usize),
) {
    let mut x = 0;
    while x + W <= width {
        block::<C, W, FMA>(srcs, weights, bias, activation, (out, out_stride), x);
        x += W;
    }
    while x + 8 <= width {
        block::<C, 8, FMA>(srcs, weights, bias, activation, (out, out_stride), x);
        x += 8;
    }
    while x < width {
        block::<C, 1, FMA>(srcs, weights, bias, activation, (out, out_stride), x);
        x += 1;
    }
}

/// `C × N` outputs starting at pixel `x`, held in registers across every tap.
#[inline(always)]
fn block<const C: usize, const N: usize, const FMA: bool>(
    srcs: &[&[f32]],
    weights: &[[f32; C]],
    bias: [f32; C],
    activation: Activation,
    (out, out_stride): (&mut [f32], usize),
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
        out[c * out_stride + x..][..N].copy_from_slice(acc);
    }
}
