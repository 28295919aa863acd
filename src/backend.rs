//! What libtorch this crate was built against and what of it the running process has: whether
//! libtorch's CUDA backend is compiled in and loaded, how many CUDA devices it sees (and, when
//! none, why), and cuDNN.
//!
//! A binary that depends on libtorch can start without its CUDA backend: the linker drops
//! `libtorch_cuda.so` unless told to keep it (see the README's "Using tch-prune in your crate"),
//! and then `Device::cuda_if_available()` quietly gives the CPU, even on a GPU machine.
//! [`Backend::detect`] tells the two situations apart; `tch-prune doctor` prints it.

use crate::ffi;
use serde::Serialize;
use std::fmt;

/// Loads libtorch's CUDA backend into this process, for a binary linked without it (the
/// `tch-prune` command line is: its CPU runs then do not pay the backend's start-up, about
/// 130 MB of memory and the time to load it). Afterwards CUDA devices are usable as in a binary
/// linked with the backend.
///
/// Call it before anything asks libtorch about CUDA (`tch::Cuda`, a CUDA device, a CUDA
/// tensor, [`Backend::detect`]): libtorch settles whether CUDA exists at the first question
/// and keeps that answer for the life of the process. Loading a backend already loaded does
/// nothing. Returns whether libtorch has a CUDA backend to load (`false` for a CPU-only
/// libtorch); an error says why the loader refused it.
pub fn load_cuda() -> Result<bool, String> {
    if env!("TCH_PRUNE_LIBTORCH_CUDA") != "1" {
        return Ok(false);
    }
    #[cfg(unix)]
    {
        // By name first (found through the binary's run path, or already loaded), then where
        // the crate was built against.
        let linked = std::path::Path::new(LIBTORCH_LIB).join("libtorch_cuda.so");
        let mut why = String::new();
        for name in [std::path::Path::new("libtorch_cuda.so"), &linked] {
            // Never unloaded: its static initialisers register the backend with libtorch for
            // the life of the process.
            match ffi::load_library(name) {
                Ok(()) => return Ok(true),
                Err(reason) if !reason.is_empty() => why = reason,
                Err(_) => {}
            }
        }
        Err(format!("cannot load libtorch's CUDA backend: {why}"))
    }
    #[cfg(not(unix))]
    Ok(false)
}

/// The libtorch library folder this crate was linked against (and that its binaries carry as
/// their run path); empty in a `doc-only` build.
pub const LIBTORCH_LIB: &str = env!("TCH_PRUNE_LIBTORCH_LIB");

/// What [`Backend::detect`] found. Its `Display` is the report `tch-prune doctor` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// This crate's version.
    pub crate_version: String,
    /// The libtorch version of the headers the crate was compiled against, e.g. `2.13.0`.
    pub libtorch_version: String,
    /// The libtorch library folder linked against ([`LIBTORCH_LIB`]).
    pub libtorch_lib: String,
    /// Whether that libtorch has a CUDA backend (`libtorch_cuda.so`).
    pub cuda_compiled: bool,
    /// Whether the CUDA backend is loaded in this process (it registered itself with libtorch).
    pub cuda_loaded: bool,
    /// The CUDA runtime version the backend was built with (e.g. `13000` for 13.0), if loaded.
    pub cuda_runtime_version: Option<i64>,
    /// The number of CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// Why there is no CUDA device, when there is none.
    pub cuda_unavailable_reason: Option<String>,
    /// The cuDNN version the backend was built with, if it has cuDNN.
    pub cudnn_version: Option<i64>,
    /// Whether cuDNN can be used (`torch.backends.cudnn.is_available()`: built in and a device).
    pub cudnn_available: bool,
    /// Why the crate was built without its NCCL library (the process groups' CUDA backend,
    /// [`crate::distributed::Backend::Nccl`]); `None` when it has one.
    pub nccl_missing: Option<String>,
}

/// The libtorch version of the headers this crate was compiled against, e.g. `2.13.0`.
pub fn libtorch_version() -> String {
    ffi::libtorch_version()
}

impl Backend {
    /// Asks libtorch. The first call in a process initialises CUDA when the backend is loaded
    /// (as any CUDA call does); it never fails: what is missing is reported in the fields.
    pub fn detect() -> Backend {
        let libtorch_version = libtorch_version();
        let cudart = ffi::cudart_version();
        let cudnn = ffi::cudnn_version();
        let (cuda_devices, libtorch_said) = ffi::cuda_device_count();
        let cuda_compiled = env!("TCH_PRUNE_LIBTORCH_CUDA") == "1";
        let cuda_loaded = cudart.is_some();
        let cuda_unavailable_reason = (cuda_devices == 0)
            .then(|| no_device_reason(cuda_compiled, cuda_loaded, libtorch_said));
        Backend {
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            libtorch_version,
            libtorch_lib: LIBTORCH_LIB.to_string(),
            cuda_compiled,
            cuda_loaded,
            cuda_runtime_version: cudart,
            cuda_devices,
            cuda_unavailable_reason,
            cudnn_version: cudnn,
            cudnn_available: cudnn.is_some() && cuda_devices > 0,
            nccl_missing: Some(env!("TCH_PRUNE_NCCL_MISSING"))
                .filter(|why| !why.is_empty())
                .map(String::from),
        }
    }
}

/// Why libtorch sees no CUDA device, from the most to the least specific evidence.
fn no_device_reason(compiled: bool, loaded: bool, libtorch_said: String) -> String {
    if !compiled {
        return "the libtorch linked against has no CUDA backend (a CPU-only build)".into();
    }
    if !loaded {
        return "libtorch_cuda.so is not loaded: the binary was linked without it (see the \
                README's \"Using tch-prune in your crate\")"
            .into();
    }
    if !libtorch_said.is_empty() {
        return format!(
            "libtorch: {}",
            crate::checkpoint::first_line(&libtorch_said)
        );
    }
    // libtorch warns only on the first count in a process; ask the loader about the driver.
    #[cfg(unix)]
    if let Err(why) = ffi::can_load(c"libcuda.so.1") {
        return format!("no NVIDIA driver: {}", why.trim());
    }
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(visible) => format!("the NVIDIA driver is loaded, CUDA_VISIBLE_DEVICES={visible:?}"),
        Err(_) => "the NVIDIA driver is loaded but reports no usable device".into(),
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "tch-prune      {}", self.crate_version)?;
        writeln!(
            f,
            "libtorch       {} ({})",
            self.libtorch_version, self.libtorch_lib
        )?;
        writeln!(f, "CUDA compiled  {}", yes_no(self.cuda_compiled))?;
        match self.cuda_runtime_version {
            Some(v) => writeln!(
                f,
                "CUDA loaded    yes (CUDA runtime {}.{})",
                v / 1000,
                v % 1000 / 10
            )?,
            None => writeln!(f, "CUDA loaded    no")?,
        }
        match &self.cuda_unavailable_reason {
            Some(why) => writeln!(f, "CUDA devices   {} ({why})", self.cuda_devices)?,
            None => writeln!(f, "CUDA devices   {}", self.cuda_devices)?,
        }
        match self.cudnn_version {
            Some(v) => {
                // cuDNN 9 numbers its versions major * 10000 + minor * 100 + patch, 8 used 1000.
                let (major, rest) = if v >= 10000 {
                    (v / 10000, v % 10000)
                } else {
                    (v / 1000, v % 1000)
                };
                writeln!(
                    f,
                    "cuDNN          {} (cuDNN {major}.{}.{})",
                    if self.cudnn_available {
                        "available"
                    } else {
                        "built in, no device to use it"
                    },
                    rest / 100,
                    rest % 100
                )?
            }
            None => writeln!(f, "cuDNN          no")?,
        }
        match &self.nccl_missing {
            None => write!(f, "NCCL           built (process groups' CUDA tensors)"),
            Some(why) => write!(f, "NCCL           no ({why})"),
        }
    }
}
