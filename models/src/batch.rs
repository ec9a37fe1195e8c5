//! How a batch goes through a network on the CPU: image by image, the images in parallel.
//!
//! Layer by layer, a batch's activations outgrow the caches (8 landmark crops at 56² × 32
//! channels are 3.2 MB per tensor) and every layer streams them through memory. One image's
//! whole network in one go keeps them in L2, and rayon still spreads each image's layers over
//! threads that have no image of their own. Measured on the 2-core machine (per image,
//! layer by layer → image by image): landmarks at batch 8 1.9 → 1.6 ms, TinyFaceDetector 416
//! at batch 4 10.6 → 5.5 ms, SSD at batch 2 90 → 75 ms. The embedding ResNet is the
//! exception (7.4 → 8.0 ms at batch 8): its convolutions multiply the whole batch at once.

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

/// `forward` over the batch `x` (`[n, …]`): on the CPU each image on its own, the images in
/// parallel, the outputs stacked in order; on other devices the whole batch at once.
pub(crate) fn image_by_image<T: Stack>(
    x: &Tensor,
    forward: impl Fn(&Tensor) -> Result<T> + Sync,
) -> Result<T> {
    let n = x.dim(0)?;
    if n < 2 || !x.device().is_cpu() {
        return forward(x);
    }
    let parts = (0..n)
        .into_par_iter()
        .map(|i| forward(&x.narrow(0, i, 1)?))
        .collect::<Result<Vec<T>>>()?;
    T::stack(parts)
}
