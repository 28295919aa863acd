//! Where a process joins its group: `torch.distributed`'s `env://` variables, read and checked.

use super::Backend;
use crate::error::{PruneError, Result};
use std::time::Duration;

/// What a process needs to join its group: its rank, the group's size and the address of the
/// store that every rank meets at. [`GroupConfig::from_env`] reads what `torchrun` sets; the
/// fields are public for a launcher of your own.
///
/// ```
/// use std::time::Duration;
/// use tch_prune::distributed::GroupConfig;
/// let config = GroupConfig::new(0, 1, "127.0.0.1", 29500).with_timeout(Duration::from_secs(60));
/// assert_eq!((config.rank, config.world_size), (0, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// This process's rank, in `0..world_size` (`RANK`).
    pub rank: usize,
    /// How many processes the group has (`WORLD_SIZE`).
    pub world_size: usize,
    /// This process's rank on its machine (`LOCAL_RANK`; the rank when unset): which GPU it
    /// takes, by convention.
    pub local_rank: usize,
    /// The host of the store (`MASTER_ADDR`).
    pub master_addr: String,
    /// The store's port (`MASTER_PORT`).
    pub master_port: u16,
    /// How long joining and each collective may wait for the other ranks
    /// (`TCH_PRUNE_DIST_TIMEOUT` in seconds; 300 when unset).
    pub timeout: Duration,
    /// Whether the launcher hosts the store (torchrun's agent does, and says so with
    /// `TORCHELASTIC_USE_AGENT_STORE=True`); when it does not, rank 0 hosts it.
    pub launcher_store: bool,
    /// The launcher's restart count (`TORCHELASTIC_RESTART_COUNT`): a restarted attempt meets
    /// under keys of its own in the launcher's store.
    pub attempt: u32,
    /// The network interfaces Gloo's sockets use (`GLOO_SOCKET_IFNAME`, comma-separated, as
    /// for `torch.distributed`). When empty: loopback if `master_addr` is a loopback address
    /// (every rank is then on this machine), else the address this machine's hostname resolves
    /// to, as c10d does.
    pub interfaces: Vec<String>,
    /// The backend of CUDA tensors (`TCH_PRUNE_DIST_BACKEND`: `gloo`, the default, or `nccl`);
    /// CPU tensors always take Gloo.
    pub backend: Backend,
}

/// The timeout when `TCH_PRUNE_DIST_TIMEOUT` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the user is told to do when the variables are missing.
const LAUNCH_HINT: &str = "launch with torchrun (torchrun --nproc-per-node N --no-python ./binary ...) or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT";

impl GroupConfig {
    /// A group of `world_size` processes meeting at `master_addr:master_port`, rank 0 hosting
    /// the store; `local_rank` is the rank and the timeout 300 s.
    pub fn new(rank: usize, world_size: usize, master_addr: &str, master_port: u16) -> Self {
        GroupConfig {
            rank,
            world_size,
            local_rank: rank,
            master_addr: master_addr.to_string(),
            master_port,
            timeout: DEFAULT_TIMEOUT,
            launcher_store: false,
            attempt: 0,
            interfaces: Vec::new(),
            backend: Backend::Gloo,
        }
    }

    /// The same with another timeout for joining and for each collective.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same with another backend for CUDA tensors.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The variables `torchrun` sets (those of `torch.distributed`'s `env://`): `RANK`,
    /// `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` required, `LOCAL_RANK`,
    /// `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`, `GLOO_SOCKET_IFNAME`,
    /// `TCH_PRUNE_DIST_TIMEOUT` (seconds) and `TCH_PRUNE_DIST_BACKEND` optional. A missing or malformed one is an error
    /// naming it and saying what to do.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (for tests and launchers).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| PruneError::Distributed(format!("{name} is not set: {LAUNCH_HINT}")))
        };
        let number = |name: &str, text: String| {
            text.trim().parse::<u64>().map_err(|_| {
                PruneError::Distributed(format!(
                    "{name}={text:?} is not a non-negative integer: {LAUNCH_HINT}"
                ))
            })
        };
        let world_size = number("WORLD_SIZE", required("WORLD_SIZE")?)?;
        let rank = number("RANK", required("RANK")?)?;
        if world_size == 0 {
            return Err(PruneError::Distributed(format!(
                "WORLD_SIZE=0: a group has at least one process; {LAUNCH_HINT}"
            )));
        }
        if world_size > i32::MAX as u64 {
            return Err(PruneError::Distributed(format!(
                "WORLD_SIZE={world_size} is larger than c10d allows ({})",
                i32::MAX
            )));
        }
        if rank >= world_size {
            return Err(PruneError::Distributed(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}: ranks are 0 to {}",
                world_size - 1
            )));
        }
        let local_rank = match var("LOCAL_RANK").filter(|v| !v.is_empty()) {
            Some(text) => number("LOCAL_RANK", text)?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        let port_text = required("MASTER_PORT")?;
        let master_port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                PruneError::Distributed(format!(
                    "MASTER_PORT={port_text:?} is not a port number (1 to 65535)"
                ))
            })?;
        let timeout = match var("TCH_PRUNE_DIST_TIMEOUT").filter(|v| !v.is_empty()) {
            Some(text) => {
                let seconds = text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0 && s.is_finite());
                match seconds {
                    Some(s) => Duration::from_secs_f64(s),
                    None => {
                        return Err(PruneError::Distributed(format!(
                            "TCH_PRUNE_DIST_TIMEOUT={text:?} is not a positive number of seconds"
                        )))
                    }
                }
            }
            None => DEFAULT_TIMEOUT,
        };
        let launcher_store = var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
        let attempt = match var("TORCHELASTIC_RESTART_COUNT").filter(|v| !v.is_empty()) {
            Some(text) => number("TORCHELASTIC_RESTART_COUNT", text)?.min(u32::MAX as u64) as u32,
            None => 0,
        };
        let interfaces = var("GLOO_SOCKET_IFNAME")
            .map(|names| {
                names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let backend = match var("TCH_PRUNE_DIST_BACKEND").filter(|v| !v.is_empty()) {
            Some(text) => text.parse().map_err(|e: PruneError| {
                PruneError::Distributed(format!("TCH_PRUNE_DIST_BACKEND: {e}"))
            })?,
            None => Backend::Gloo,
        };
        Ok(GroupConfig {
            rank: rank as usize,
            world_size: world_size as usize,
            local_rank: local_rank as usize,
            master_addr,
            master_port,
            timeout,
            launcher_store,
            attempt,
            interfaces,
            backend,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<GroupConfig> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GroupConfig::from_vars(|name| map.get(name).cloned())
    }

    const OK: [(&str, &str); 4] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "3"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29400"),
    ];

    #[test]
    fn torchrun_variables() {
        let mut vars = OK.to_vec();
        vars.extend([
            ("LOCAL_RANK", "0"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("TCH_PRUNE_DIST_TIMEOUT", "1.5"),
            ("GLOO_SOCKET_IFNAME", "eth0, ib0"),
            ("TCH_PRUNE_DIST_BACKEND", "cpu:gloo,cuda:nccl"),
        ]);
        let c = read(&vars).unwrap();
        assert_eq!((c.rank, c.world_size, c.local_rank), (1, 3, 0));
        assert_eq!((c.master_addr.as_str(), c.master_port), ("10.0.0.1", 29400));
        assert!(c.launcher_store);
        assert_eq!(c.attempt, 2);
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.interfaces, ["eth0", "ib0"]);
        assert_eq!(c.backend, Backend::Nccl);
        let plain = read(&OK).unwrap();
        assert_eq!(plain.backend, Backend::Gloo);
        assert!(plain.interfaces.is_empty());
        assert_eq!(plain.local_rank, 1);
        assert!(!plain.launcher_store);
        assert_eq!(plain.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn one_line_errors_naming_the_variable() {
        for (drop, needle) in [
            ("RANK", "RANK is not set"),
            ("WORLD_SIZE", "WORLD_SIZE is not set"),
            ("MASTER_ADDR", "MASTER_ADDR is not set"),
            ("MASTER_PORT", "MASTER_PORT is not set"),
        ] {
            let vars: Vec<_> = OK.iter().copied().filter(|(k, _)| *k != drop).collect();
            let e = read(&vars).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("torchrun"), "{e}");
            assert!(!e.contains('\n'));
        }
        let bad = |k: &'static str, v: &'static str| {
            let mut vars: Vec<_> = OK.iter().copied().filter(|(n, _)| *n != k).collect();
            vars.push((k, v));
            read(&vars).unwrap_err().to_string()
        };
        assert!(bad("RANK", "3").contains("RANK=3 is not below WORLD_SIZE=3"));
        assert!(bad("RANK", "-1").contains("RANK=\"-1\" is not a non-negative integer"));
        assert!(bad("WORLD_SIZE", "0").contains("WORLD_SIZE=0"));
        assert!(bad("MASTER_PORT", "70000").contains("MASTER_PORT=\"70000\" is not a port"));
        assert!(bad("LOCAL_RANK", "x").contains("LOCAL_RANK"));
        assert!(bad("TCH_PRUNE_DIST_TIMEOUT", "0").contains("TCH_PRUNE_DIST_TIMEOUT"));
        let e = bad("TCH_PRUNE_DIST_BACKEND", "mpi");
        assert!(
            e.contains("TCH_PRUNE_DIST_BACKEND") && e.contains("use gloo, or nccl"),
            "{e}"
        );
    }
}
