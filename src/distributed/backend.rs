//! [`Backend`]: which of c10d's backends carries a group's CUDA tensors, and the loading of
//! NCCL's.

use crate::error::{PruneError, Result};
use std::ffi::c_void;
use std::path::PathBuf;
use std::ptr::NonNull;

/// The c10d backend of a process group's CUDA tensors. CPU tensors always go through Gloo (the
/// pruning calls' own collectives among them): [`Backend::Nccl`] is `torch.distributed`'s
/// `"cpu:gloo,cuda:nccl"`.
///
/// ```
/// use tch_prune::distributed::Backend;
/// assert_eq!("nccl".parse::<Backend>().unwrap(), Backend::Nccl);
/// assert_eq!("cpu:gloo,cuda:nccl".parse::<Backend>().unwrap(), Backend::Nccl);
/// assert_eq!(Backend::default(), Backend::Gloo);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Gloo for every tensor: a CUDA tensor is copied to the CPU, reduced there and copied
    /// back. Works on every machine.
    #[default]
    Gloo,
    /// NCCL for CUDA tensors, GPU to GPU (each rank's tensors on its own GPU, by convention
    /// `Device::Cuda(local_rank)`), Gloo for CPU tensors. Joining fails on every rank when a
    /// rank cannot use NCCL: libtorch without CUDA, a crate built without NCCL's headers, or
    /// no GPU in sight.
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = PruneError;

    /// `gloo`, `nccl`, or `torch.distributed`'s `cpu:gloo,cuda:nccl` (the same as `nccl`).
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "gloo" | "cpu:gloo" | "cpu:gloo,cuda:gloo" => Ok(Backend::Gloo),
            "nccl" | "cuda:nccl" | "cpu:gloo,cuda:nccl" | "cuda:nccl,cpu:gloo" => Ok(Backend::Nccl),
            _ => Err(PruneError::Distributed(format!(
                "{text:?} is not a backend: use gloo, or nccl (CUDA tensors on NCCL, CPU tensors \
                 on Gloo)"
            ))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "cpu:gloo,cuda:nccl",
        })
    }
}

/// The file name of the NCCL library build.rs makes.
const NCCL_LIBRARY: &str = "libtch_prune_nccl.so";

/// `tp_nccl_backend_new` of the NCCL library (src/ffi/nccl.cpp), loaded once per process. It
/// is looked for beside the running program first (where a program copied to another machine
/// brings it along), then where the crate was built.
pub(super) fn nccl_factory() -> std::result::Result<NonNull<c_void>, String> {
    static FACTORY: std::sync::OnceLock<std::result::Result<usize, String>> =
        std::sync::OnceLock::new();
    // Kept as an address: a pointer is not `Sync`, and the function lives as long as the process.
    let address = FACTORY
        .get_or_init(|| load_nccl().map(|f| f.as_ptr() as usize))
        .clone()?;
    NonNull::new(address as *mut c_void).ok_or_else(|| "the NCCL library's factory is null".into())
}

fn load_nccl() -> std::result::Result<NonNull<c_void>, String> {
    let built = env!("TCH_PRUNE_NCCL_PLUGIN");
    if built.is_empty() {
        return Err(format!(
            "this build of tch-prune has no NCCL: {}",
            env!("TCH_PRUNE_NCCL_MISSING")
        ));
    }
    // The CUDA backend first, as for any CUDA work of the crate: the library links it too, but
    // loaded this way libtorch's CUDA functions reach the rest of the process.
    crate::backend::load_cuda()?;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(NCCL_LIBRARY)))
        .filter(|p| p.is_file());
    let path = beside.unwrap_or_else(|| PathBuf::from(built));
    #[cfg(unix)]
    {
        crate::ffi::load_symbol(&path, c"tp_nccl_backend_new").map_err(|why| {
            format!(
                "cannot load tch-prune's NCCL library {}: {why}",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    Err(format!(
        "NCCL is not supported on this system ({})",
        path.display()
    ))
}
