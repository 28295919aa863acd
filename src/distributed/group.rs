//! [`ProcessGroup`]: a joined group and its collectives (Gloo, and NCCL for CUDA tensors), with
//! the failure of a collective traced to the rank that caused it.

use super::backend::nccl_factory;
use super::config::GroupConfig;
use super::Backend;
use crate::error::{PruneError, Result};
use crate::ffi::{C10dGroup, GroupAddress, Reduce};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The reduction of [`ProcessGroup::all_reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The element-wise sum over the ranks.
    Sum,
    /// The element-wise maximum over the ranks.
    Max,
}

/// The processes of one job, joined through PyTorch's c10d: a `TCPStore` at the launcher's
/// address and a Gloo process group over it, with NCCL for CUDA tensors when the
/// [`GroupConfig`] asks for [`Backend::Nccl`].
///
/// Every collective must be called by every rank, in the same order, with tensors of the same
/// shape and dtype (what `torch.distributed` asks too). Each waits at most the group's timeout
/// for the other ranks. When one fails, because a rank died, failed or did not come, the error
/// names that rank when the group can tell (each rank records its own failure in the store
/// before it leaves: [`ProcessGroup::fail`]).
///
/// Gloo's collectives run on dense CPU tensors, NCCL's on dense CUDA tensors; any other
/// tensor (a strided view, a CUDA tensor without NCCL) is copied to a contiguous one, reduced
/// there and copied back. The methods take `&self`: the group can be shared by the threads of
/// a rank, which take turns.
pub struct ProcessGroup {
    inner: Mutex<C10dGroup>,
    config: GroupConfig,
    payload: AtomicU64,
    /// How many exchanges through the store the crate made ([`fresh_keys`](Self::fresh_keys)).
    exchanges: AtomicU64,
    /// Why the group broke, once a collective failed: later calls say so.
    broken: Mutex<Option<String>>,
}

/// How long a rank whose collective failed waits for the others to say why, before it names
/// those that said nothing.
const GRACE: Duration = Duration::from_secs(3);

impl ProcessGroup {
    /// Joins the group `torchrun` (or the environment) describes: see
    /// [`GroupConfig::from_env`]. Returns when every rank has joined.
    pub fn from_env() -> Result<Self> {
        Self::new(&GroupConfig::from_env()?)
    }

    /// Joins the group `config` describes. Returns when every rank has joined, or fails after
    /// the timeout naming the address it waited at. With [`Backend::Nccl`], every rank then
    /// adds NCCL, and all fail together, naming the ranks that could not.
    pub fn new(config: &GroupConfig) -> Result<Self> {
        let timeout_ms = i64::try_from(config.timeout.as_millis()).unwrap_or(i64::MAX);
        // Under torchrun the agent's store holds the launcher's own keys: ours live under a
        // prefix of their own, one per restart of the job.
        let prefix = format!("tch_prune/attempt_{}/", config.attempt);
        let interfaces = config.interfaces.join(",");
        let address = GroupAddress {
            host: &config.master_addr,
            port: config.master_port,
            rank: config.rank as i32,
            world_size: config.world_size as i32,
            host_store: !config.launcher_store && config.rank == 0,
            timeout_ms,
            prefix: &prefix,
            interfaces: &interfaces,
        };
        let group = C10dGroup::new(&address).map_err(|e| {
            PruneError::Distributed(format!(
                "rank {} of {} could not join the group at {}:{} (timeout {:.0} s): {e}",
                config.rank,
                config.world_size,
                config.master_addr,
                config.master_port,
                config.timeout.as_secs_f64()
            ))
        })?;
        let joined = ProcessGroup {
            inner: Mutex::new(group),
            config: config.clone(),
            payload: AtomicU64::new(0),
            exchanges: AtomicU64::new(0),
            broken: Mutex::new(None),
        };
        if config.backend == Backend::Nccl {
            let added = nccl_factory().and_then(|factory| {
                // SAFETY: the factory is the NCCL library's tp_nccl_backend_new.
                unsafe { joined.lock().use_nccl(factory) }.map_err(|e| e.to_string())
            });
            // Its own collective is on the CPU: Gloo's, whatever the backend.
            joined.all_succeeded(added.err().map(|e| format!("cannot use NCCL: {e}")))?;
        }
        Ok(joined)
    }

    /// The backend of the group's CUDA tensors (the [`GroupConfig`]'s: a group that could not
    /// add NCCL was not made).
    pub fn backend(&self) -> Backend {
        self.config.backend
    }

    /// This process's rank, in `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.config.rank
    }

    /// How many processes the group has.
    pub fn world_size(&self) -> usize {
        self.config.world_size
    }

    /// This process's rank on its machine (`LOCAL_RANK`): which GPU it takes, by convention.
    pub fn local_rank(&self) -> usize {
        self.config.local_rank
    }

    /// How long joining and each collective may wait for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The bytes this rank has handed to collectives so far: the sizes of the tensors it
    /// reduced, broadcast or gathered (Gloo's ring sends about twice that over the network for
    /// an all-reduce). The pruning calls over the group read it before and after to report their
    /// communication.
    pub fn payload_bytes(&self) -> u64 {
        self.payload.load(Ordering::Relaxed)
    }

    /// Replaces `tensor`, on every rank, by its element-wise sum or maximum over the ranks.
    pub fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        let op = match op {
            ReduceOp::Sum => Reduce::Sum,
            ReduceOp::Max => Reduce::Max,
        };
        self.staged("all_reduce", tensor, |g, t, nccl| g.all_reduce(t, op, nccl))
    }

    /// Copies rank `root`'s `tensor` into `tensor` on every other rank.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(PruneError::InvalidArgument(format!(
                "broadcast from rank {root}: the group's ranks are 0 to {}",
                self.world_size() - 1
            )));
        }
        self.staged("broadcast", tensor, |g, t, nccl| {
            g.broadcast(t, root as i32, nccl)
        })
    }

    /// Every rank's `tensor` (the same shape and dtype on all), stacked in rank order along a
    /// new first dimension: on the tensor's GPU when NCCL carries it, else on the CPU.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let (device, nccl) = self.route(tensor);
        let input = tensor.f_to(device)?.f_contiguous()?;
        self.count(&input);
        let mut group = self.lock();
        let result = group.all_gather(&input, nccl);
        result.map_err(|e| self.failed("all_gather", &mut group, e.to_string()))
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut group = self.lock();
        let result = group.barrier();
        result.map_err(|e| self.failed("barrier", &mut group, e.to_string()))
    }

    /// Averages the gradients of `vs`'s trainable variables over the ranks (a sum divided by
    /// the world size, in one collective): the step that makes a tch training loop data
    /// parallel, called between `backward` and the optimizer's step. Variables without a
    /// gradient are skipped on every rank alike (they must be the same on every rank).
    pub fn all_reduce_gradients(&self, vs: &VarStore) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let grads: Vec<Tensor> = named
            .iter()
            .map(|(_, v)| v.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return Ok(());
        }
        // One collective per dtype, in the gradients' own precision.
        let mut kinds: Vec<Kind> = grads.iter().map(Tensor::kind).collect();
        kinds.dedup();
        kinds.sort_by_key(|k| format!("{k:?}"));
        kinds.dedup();
        for kind in kinds {
            let same: Vec<&Tensor> = grads.iter().filter(|g| g.kind() == kind).collect();
            // Flattened where their backend reduces them: one GPU for NCCL, else the CPU.
            let device = match self.route(same[0]) {
                (gpu, true) if same.iter().all(|g| g.device() == gpu) => gpu,
                _ => Device::Cpu,
            };
            let flat: Vec<Tensor> = same
                .iter()
                .map(|g| g.f_to(device)?.f_reshape([-1]))
                .collect::<Result<_, _>>()?;
            let mut all = Tensor::f_cat(&flat, 0)?;
            drop(flat);
            self.all_reduce(&all, ReduceOp::Sum)?;
            let _ = all.f_div_scalar_(self.world_size() as f64)?;
            let mut offset = 0;
            tch::no_grad(|| -> Result<()> {
                for g in same {
                    let n = g.numel() as i64;
                    let part = all.f_narrow(0, offset, n)?.f_view(g.size().as_slice())?;
                    g.shallow_clone().f_copy_(&part)?;
                    offset += n;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Tells the other ranks that this one fails, and why: a rank whose collective then
    /// breaks names this rank and the reason. Call it before leaving on an error of your own
    /// (the pruning calls and the CLI do).
    pub fn fail(&self, reason: &str) {
        let mut group = self.lock();
        let key = status_key(self.rank());
        let _ = group.store_set(&key, &format!("failed: {}", one_line(reason)));
    }

    /// Every rank learns whether every rank succeeded at what it just did, and which did not:
    /// each passes its own error (`None` when it succeeded). `Ok` when no rank failed; else an
    /// error naming the ranks that failed and why (a rank that failed also returns this, after
    /// its own error has been recorded for the others). One all-reduce of one number.
    pub fn all_succeeded(&self, error: Option<String>) -> Result<()> {
        if let Some(error) = &error {
            self.fail(error);
        }
        let flag = Tensor::from_slice(&[i64::from(error.is_some())]);
        self.all_reduce(&flag, ReduceOp::Max)?;
        if flag.int64_value(&[0]) == 0 {
            return Ok(());
        }
        let me = self.rank();
        let mut group = self.lock();
        let failed: Vec<String> = (0..self.world_size())
            .filter(|&r| r != me)
            .filter_map(|r| {
                let key = status_key(r);
                match group.store_check(&key) {
                    Ok(true) => group.store_get(&key).ok().map(|s| format!("rank {r} {s}")),
                    _ => None,
                }
            })
            .collect();
        Err(PruneError::Distributed(match (failed.is_empty(), error) {
            (_, Some(mine)) if failed.is_empty() => {
                format!("rank {me} failed: {}", one_line(&mine))
            }
            (true, None) => format!("rank {me}: another rank failed"),
            _ => format!("rank {me} stops: {}", failed.join("; ")),
        }))
    }

    /// Sets `key` in the group's store (under the group's prefix).
    pub(crate) fn store_set(&self, key: &str, value: &str) -> Result<()> {
        Ok(self.lock().store_set(key, value)?)
    }

    /// The value of `key`, which rank `from` sets, in the group's store, waiting for it up to
    /// the timeout.
    pub(crate) fn store_get(&self, key: &str, from: usize) -> Result<String> {
        let value = self.lock().store_get(key);
        value.map_err(|e| {
            PruneError::Distributed(format!(
                "rank {}: no word from rank {from} within {:.0} s: {e}",
                self.rank(),
                self.config.timeout.as_secs_f64()
            ))
        })
    }

    /// A prefix for the store keys of one exchange of the crate's (`what`), fresh at each call:
    /// every rank makes the same calls in the same order, so it is the same on every rank, and
    /// a second exchange of the same kind never reads the first one's keys.
    pub(crate) fn fresh_keys(&self, what: &str) -> String {
        format!("{what}/{}/", self.exchanges.fetch_add(1, Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, C10dGroup> {
        // A panic while holding the lock left the group as it was: Gloo's state is its own.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, tensor: &Tensor) {
        let bytes = tensor.numel() as u64 * tensor.kind().elt_size_in_bytes() as u64;
        self.payload.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Where a collective on `tensor` runs: on its GPU through NCCL, or on the CPU through
    /// Gloo.
    fn route(&self, tensor: &Tensor) -> (Device, bool) {
        match tensor.device() {
            device @ Device::Cuda(_) if self.backend() == Backend::Nccl => (device, true),
            _ => (Device::Cpu, false),
        }
    }

    /// Runs an in-place collective on `tensor`, through a contiguous copy on the device of its
    /// backend when it is not one already.
    fn staged(
        &self,
        what: &str,
        tensor: &Tensor,
        op: impl FnOnce(&mut C10dGroup, &Tensor, bool) -> crate::ffi::Result<()>,
    ) -> Result<()> {
        let (device, nccl) = self.route(tensor);
        let direct = tensor.device() == device && tensor.is_contiguous();
        let staged = if direct {
            tensor.shallow_clone()
        } else {
            tensor.f_to(device)?.f_contiguous()?
        };
        self.count(&staged);
        {
            let mut group = self.lock();
            let result = op(&mut group, &staged, nccl);
            result.map_err(|e| self.failed(what, &mut group, e.to_string()))?;
        }
        if !direct {
            tch::no_grad(|| tensor.shallow_clone().f_copy_(&staged))?;
        }
        Ok(())
    }

    /// The error of a failed collective, with the rank that caused it where the store tells:
    /// this rank records that it aborts, then waits a little for every other rank to record
    /// something; a rank that recorded a failure is named with its reason, a rank that recorded
    /// nothing as gone.
    fn failed(&self, what: &str, group: &mut C10dGroup, error: String) -> PruneError {
        let me = self.rank();
        let mine = status_key(me);
        if !matches!(group.store_check(&mine), Ok(true)) {
            let _ = group.store_set(&mine, "aborted");
        }
        if let Some(earlier) = self
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return PruneError::Distributed(format!("rank {me}: {what}: {earlier}"));
        }
        // The ranks still waiting on this one fail at once when its connections close, and
        // record that they abort: only the ranks that caused the failure stay silent.
        group.abort();
        let beats = |group: &mut C10dGroup| -> Vec<Option<String>> {
            (0..self.world_size())
                .map(|r| {
                    let key = format!("alive/{r}");
                    match group.store_check(&key) {
                        Ok(true) => group.store_get(&key).ok(),
                        _ => None,
                    }
                })
                .collect()
        };
        let first_beats = beats(group);
        let deadline = Instant::now() + GRACE.min(self.config.timeout);
        let cause = loop {
            let mut failed = Vec::new();
            let mut silent = Vec::new();
            let mut store_gone = false;
            for rank in (0..self.world_size()).filter(|&r| r != me) {
                let key = status_key(rank);
                match group.store_check(&key) {
                    Ok(true) => match group.store_get(&key) {
                        Ok(status) if status.starts_with("failed") => failed.push((rank, status)),
                        _ => {}
                    },
                    Ok(false) => silent.push(rank),
                    Err(_) => {
                        store_gone = true;
                        break;
                    }
                }
            }
            if store_gone {
                break Some(format!(
                    "the group's store at {}:{} is gone: {} stopped",
                    self.config.master_addr,
                    self.config.master_port,
                    if self.config.launcher_store {
                        "the launcher, which hosts it,"
                    } else {
                        "rank 0, which hosts it,"
                    }
                ));
            }
            if !failed.is_empty() {
                break Some(
                    failed
                        .iter()
                        .map(|(rank, status)| format!("rank {rank} {status}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
            if silent.is_empty() {
                break None;
            }
            if Instant::now() >= deadline {
                // A rank whose heartbeat stood still over the wait is gone; one whose
                // heartbeat went on is still at work and will fail in its turn.
                let last_beats = beats(group);
                let (gone, busy): (Vec<usize>, Vec<usize>) = silent
                    .iter()
                    .partition(|&&r| last_beats[r].is_none() || last_beats[r] == first_beats[r]);
                break Some(if gone.is_empty() {
                    format!(
                        "the group's connections broke while {} still ran",
                        ranks(&busy)
                    )
                } else {
                    format!(
                        "{} left the group without a word (killed, or its machine lost)",
                        ranks(&gone)
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let error = one_line(&error);
        let message = match cause {
            Some(cause) => format!("{cause} ({error})"),
            None => error,
        };
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("the group failed earlier: {message}"));
        PruneError::Distributed(format!("rank {me}: {what} failed: {message}"))
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("backend", &self.backend().to_string())
            .finish()
    }
}

fn status_key(rank: usize) -> String {
    format!("status/{rank}")
}

fn one_line(text: &str) -> String {
    crate::error::first_line(text)
}

/// "rank 2" or "ranks 1, 3".
fn ranks(list: &[usize]) -> String {
    let names: Vec<String> = list.iter().map(usize::to_string).collect();
    match list.len() {
        1 => format!("rank {}", names[0]),
        _ => format!("ranks {}", names.join(", ")),
    }
}
