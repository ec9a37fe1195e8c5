//! Which device the networks run on: the CPU (Rollcall's own kernels) or an NVIDIA GPU
//! (Candle's CUDA backend, in a build with the `cuda` feature).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{ModelError, Result};

/// A device as an operator names it: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 when
/// this build has CUDA and the machine a GPU, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// GPU 0 where there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use cpu, cuda, cuda:N or auto")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The choice in `ROLLCALL_DEVICE`, or `default` when it is unset (for the tests and
    /// benches; the server reads the variable through its command line).
    pub fn from_env(default: Self) -> std::result::Result<Self, String> {
        std::env::var("ROLLCALL_DEVICE")
            .map_or(Ok(default), |v| v.parse())
            .map_err(|e| format!("ROLLCALL_DEVICE: {e}"))
    }

    /// Opens the device. `cuda:N` fails with [`ModelError::Device`] when this build has no CUDA
    /// or the GPU cannot be opened; `auto` then falls back to the CPU. On a GPU, f32 matrix
    /// products may use TF32 tensor cores (10-bit mantissas, like the CPU's 16-bit products)
    /// unless `ROLLCALL_GPU_TF32=0`.
    pub fn open(self) -> Result<Device> {
        let cuda = |ordinal: usize| {
            let device = Device::new_cuda(ordinal).map_err(|e| ModelError::Device {
                device: self.to_string(),
                message: if candle_core::utils::cuda_is_available() {
                    e.to_string()
                } else {
                    "this build has no CUDA support (build with `--features cuda`)".into()
                },
            })?;
            let tf32 = std::env::var("ROLLCALL_GPU_TF32").map_or(true, |v| v.trim() != "0");
            candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
            Ok(device)
        };
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => cuda(ordinal),
            Self::Auto if candle_core::utils::cuda_is_available() => {
                cuda(0).or_else(|_| Ok(Device::Cpu))
            }
            Self::Auto => Ok(Device::Cpu),
        }
    }
}

/// How many images a batching queue should gather for one forward pass on `device`: a GPU
/// needs large batches to fill its cores, the CPU kernels already use every core on one image
/// and gain little past a few.
pub fn default_max_batch(device: &Device) -> usize {
    if device.is_cpu() {
        8
    } else {
        64
    }
}

/// A short name of an opened device for logs and metrics: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        for (s, want) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            (" cuda ", DeviceChoice::Cuda(0)),
            ("gpu", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>(), Ok(want), "{s}");
            assert_eq!(want.to_string().parse::<DeviceChoice>(), Ok(want));
        }
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "tpu", "metal"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("cpu, cuda, cuda:N or auto"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_and_auto_open_the_cpu_in_a_build_without_cuda() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            let err = DeviceChoice::Cuda(0).open().unwrap_err();
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }
}
