//! Throughput of every convolution class the face networks run, in GFLOP/s (criterion's
//! `Gelem/s` here counts floating-point operations), next to the machine's matmul rate, the
//! ceiling the CPU kernels are measured against.
//! `cargo bench -p rollcall-benches --bench kernels`

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rollcall_models::layers::{Activation, Conv, Padding, SeparableConv};

/// One convolution class: where it runs, its shape, and the batch it is timed at.
struct Class {
    name: &'static str,
    batch: usize,
    cin: usize,
    cout: usize,
    side: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    kind: Kind,
}

/// What runs: a dense conv, a depthwise conv alone, or a depthwise 3×3 conv fused with the
/// 1×1 conv after it (`cin` → `cout`, the stride on the depthwise conv).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Dense,
    Depthwise,
    Separable,
}

const fn class(
    name: &'static str,
    batch: usize,
    (cin, cout, side): (usize, usize, usize),
    (kernel, stride): (usize, usize),
    padding: Padding,
) -> Class {
    Class {
        name,
        batch,
        cin,
        cout,
        side,
        kernel,
        stride,
        padding,
        kind: Kind::Dense,
    }
}

const fn depthwise(name: &'static str, channels: usize, side: usize, stride: usize) -> Class {
    Class {
        name,
        batch: 1,
        cin: channels,
        cout: channels,
        side,
        kernel: 3,
        stride,
        padding: Padding::Same,
        kind: Kind::Depthwise,
    }
}

const fn separable(
    name: &'static str,
    (cin, cout, side): (usize, usize, usize),
    stride: usize,
) -> Class {
    Class {
        name,
        batch: 1,
        cin,
        cout,
        side,
        kernel: 3,
        stride,
        padding: Padding::Same,
        kind: Kind::Separable,
    }
}

/// The networks' convolution classes: the embedding ResNet at batch 8 (its serving batch),
/// the detectors at batch 1.
const CLASSES: [Class; 14] = [
    class(
        "resnet_7x7s2_3to32_150",
        8,
        (3, 32, 150),
        (7, 2),
        Padding::Valid,
    ),
    class("resnet_3x3_32_35", 8, (32, 32, 35), (3, 1), Padding::Same),
    class("resnet_3x3_64_17", 8, (64, 64, 17), (3, 1), Padding::Same),
    class("resnet_3x3_128_8", 8, (128, 128, 8), (3, 1), Padding::Same),
    class("resnet_3x3_256_4", 8, (256, 256, 4), (3, 1), Padding::Same),
    class(
        "resnet_3x3s2_64to128_17",
        8,
        (64, 128, 17),
        (3, 2),
        Padding::Valid,
    ),
    class(
        "ssd_3x3s2_3to32_512",
        1,
        (3, 32, 512),
        (3, 2),
        Padding::Same,
    ),
    class(
        "ssd_1x1_64to128_128",
        1,
        (64, 128, 128),
        (1, 1),
        Padding::Valid,
    ),
    class("ssd_1x1_512_32", 1, (512, 512, 32), (1, 1), Padding::Valid),
    class(
        "ssd_1x1_1024_16",
        1,
        (1024, 1024, 16),
        (1, 1),
        Padding::Valid,
    ),
    depthwise("ssd_dw3x3_128_128", 128, 128, 1),
    depthwise("ssd_dw3x3s2_256_64", 256, 64, 2),
    separable("ssd_sep3x3_128_128", (128, 128, 128), 1),
    separable("ssd_sep3x3s2_256to512_64", (256, 512, 64), 2),
];

fn kernels(c: &mut Criterion) {
    // As `rollcall` runs (unless GLIBC_TUNABLES is set), like `stages`.
    rollcall_server::allocator::keep_freed_memory();
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("conv_gflops");
    g.sample_size(10);
    for cl in &CLASSES {
        let x = Tensor::randn(0f32, 1.0, (cl.batch, cl.cin, cl.side, cl.side), &dev).unwrap();
        let (conv, flops) = conv_of(cl, &dev);
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_with_input(BenchmarkId::new(cl.name, cl.batch), &x, |bench, x| {
            bench.iter(|| conv(x))
        });
    }
    for n in [256usize, 1024] {
        let a = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        g.bench_with_input(
            BenchmarkId::new("candle_matmul", n),
            &(a, b),
            |bench, (a, b)| bench.iter(|| a.matmul(b).unwrap()),
        );
    }
    g.finish();
}

/// A layer with random weights and a ReLU after it: dense (`groups` 1) or depthwise
/// (`groups` = `cin` = `cout`).
fn layer(
    dev: &Device,
    (cin, cout, kernel): (usize, usize, usize),
    (stride, groups): (usize, usize),
    padding: Padding,
) -> Conv {
    let w = Tensor::randn(0f32, 0.1, (cout, cin / groups, kernel, kernel), dev).unwrap();
    let b = Tensor::zeros(cout, candle_core::DType::F32, dev).unwrap();
    Conv::new(w, Some(b), stride, groups, padding)
        .unwrap()
        .with_activation(Activation::Relu)
}

/// One forward pass of a class's layer.
type Layer = Box<dyn Fn(&Tensor) -> Tensor>;

/// The class's layer, and its floating-point operations per call.
fn conv_of(cl: &Class, dev: &Device) -> (Layer, usize) {
    let side = match cl.padding {
        Padding::Same => cl.side.div_ceil(cl.stride),
        Padding::Valid => (cl.side - cl.kernel) / cl.stride + 1,
    };
    let outputs = cl.batch * side * side;
    let (cin, cout, k) = (cl.cin, cl.cout, cl.kernel);
    match cl.kind {
        Kind::Dense => {
            let conv = layer(dev, (cin, cout, k), (cl.stride, 1), cl.padding);
            let flops = 2 * outputs * cout * cin * k * k;
            (Box::new(move |x| conv.run(x).unwrap()), flops)
        }
        Kind::Depthwise => {
            let conv = layer(dev, (cin, cin, k), (cl.stride, cin), cl.padding);
            (
                Box::new(move |x| conv.run(x).unwrap()),
                2 * outputs * cin * k * k,
            )
        }
        Kind::Separable => {
            let block = SeparableConv::new(
                layer(dev, (cin, cin, k), (cl.stride, cin), cl.padding),
                layer(dev, (cin, cout, 1), (1, 1), Padding::Valid),
            );
            let flops = 2 * outputs * (cin * k * k + cin * cout);
            (Box::new(move |x| block.run(x).unwrap()), flops)
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
