//! Helpers shared by the benchmark examples: the device a flag names and the process's
//! memory.

use candle_core::Device;

/// The device `name` names: `cpu`, or `cuda` (GPU 0, when built with the `cuda` feature).
///
/// # Errors
///
/// On another name, or when CUDA is not available.
pub fn device(name: &str) -> candle_core::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0),
        other => Err(candle_core::Error::Msg(format!(
            "unknown device {other:?}: cpu or cuda"
        ))),
    }
}

/// A memory field of this process's `/proc/self/status` (`"VmRSS"`, `"VmHWM"` for the
/// peak) in MiB; `None` where the file does not exist (not Linux).
pub fn memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_memory() {
        assert!(device("cpu").is_ok_and(|d| d.is_cpu()));
        assert!(device("tpu").is_err());
        if cfg!(target_os = "linux") {
            let (now, peak) = (memory_mib("VmRSS"), memory_mib("VmHWM"));
            assert!(now.is_some_and(|n| n > 0.0) && peak >= now, "{now:?} {peak:?}");
        }
    }
}
