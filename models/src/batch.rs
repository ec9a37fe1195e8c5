//! How a batch goes through a network on the CPU: as one job on rayon's pool, and for most
//! networks image by image, the images in parallel.
//!
//! Layer by layer, a batch's activations outgrow the caches (8 landmark crops at 56² × 32
//! channels are 3.2 MB per tensor) and every layer streams them through memory. One image's
//! whole network in one go keeps them in L2, and rayon still spreads each image's layers over
//! threads that have no image of their own. Measured on the 2-core machine (per image, layer
//! by layer → image by image): landmarks at batch 8 1.9 → 1.6 ms, TinyFaceDetector 416 at
//! batch 4 10.6 → 5.5 ms, SSD at batch 2 90 → 75 ms (its 512² activations outgrow L2 either
//! way, and at batch 8 it gains nothing). The embedding ResNet loses (7.4 → 8.0 ms at batch
//! 8): it runs [`CpuBatch::Whole`].

use candle_core::Tensor;
use rayon::prelude::*;

use crate::Result;

/// A network's output, whose per-image parts stack back into a batch along dimension 0.
pub(crate) trait Stack: Sized + Send {
    /// The batch of the parts, in order.
    fn stack(parts: Vec<Self>) -> Result<Self>;
}

impl Stack for Tensor {
    fn stack(parts: Vec<Self>) -> Result<Self> {
        Ok(Tensor::cat(&parts, 0)?)
    }
}

impl Stack for (Tensor, Tensor) {
    fn stack(parts: Vec<Self>) -> Result<Self> {
        let (a, b): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
        Ok((<Tensor as Stack>::stack(a)?, <Tensor as Stack>::stack(b)?))
    }
}

/// How a network takes a batch on the CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CpuBatch {
    /// Each image through the whole network on its own, the images in parallel.
    ImageByImage,
    /// The whole batch layer by layer.
    Whole,
}

/// `forward` over the batch `x` (`[n, …]`). On the CPU the call runs as one job on rayon's
/// pool (so that a caller outside the pool hands over once, not once per parallel layer:
/// measured at batch 1, landmarks 2.5 → 2.1 ms, TinyFaceDetector 7.4 → 6.4 ms, the embedding
/// 11.0 → 10.0 ms), image by image when `mode` says so, the outputs stacked in order; on
/// other devices (and without the CPU kernels) the whole batch goes at once.
pub(crate) fn run<T: Stack>(
    x: &Tensor,
    mode: CpuBatch,
    forward: impl Fn(&Tensor) -> Result<T> + Sync,
) -> Result<T> {
    if !crate::cpu_conv::runs_on(x.device()) {
        return forward(x);
    }
    let n = x.dim(0)?;
    rayon::scope(|_| {
        if n < 2 || mode == CpuBatch::Whole {
            return forward(x);
        }
        let parts = (0..n)
            .into_par_iter()
            .map(|i| forward(&x.narrow(0, i, 1)?))
            .collect::<Result<Vec<T>>>()?;
        T::stack(parts)
    })
}
