//! The write side of the streaming path: the steps' selections found (global thresholds up
//! front, per-tensor ones on a thread one tensor ahead of the write), then every file written
//! tensor by tensor, a bounded chunk at a time, each tensor as it is, masked, or pruned whole in
//! memory by another method, and the input checked unchanged before anything is put in place.

use super::entries::{io_error, write_entries, WRITE_CHUNK};
use super::nm::{write_nm, NmScratch};
use super::structured::{channels, write_channels};
use super::{count_zeros, ranks, StreamReport, StreamStep, StreamedModel};
use crate::checkpoint::{
    atomic_write, atomic_write_dir, check_room, InputRange, MappedTensor, TensorSink,
};
use crate::distributed::ProcessGroup;
use crate::error::{PruneError, Result};
use crate::model::script_model::add_dotted;
use crate::prune::pruner::MASK_PIECE;
use crate::prune::selection::{
    in_memory, on_this_thread, smallest_threshold, RawScores, Threshold,
};
use crate::{Pruner, PruningMethod};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

impl StreamedModel {
    /// Prunes the steps' tensors, each pruning made permanent, and writes the checkpoint to
    /// `output`: for one file, a file of its format replaced atomically; for a sharded input, a
    /// folder (that must not exist yet, or be empty) holding the same shards and an index of the
    /// same name, which appears whole or not at all. The bytes written are those
    /// [`ModelFile::save`](crate::model::ModelFile::save) writes after the same steps.
    pub fn prune(
        &self,
        steps: &[StreamStep<'_>],
        output: impl AsRef<Path>,
    ) -> Result<StreamReport> {
        self.prune_with(steps, output.as_ref(), None)
    }

    /// [`prune`](Self::prune) by one rank of `group`, each rank taking part of the work
    /// (`super::ranks`); `None`: all of it.
    pub(super) fn prune_with(
        &self,
        steps: &[StreamStep<'_>],
        output: &Path,
        group: Option<&ProcessGroup>,
    ) -> Result<StreamReport> {
        let mine = |f: usize| group.is_none_or(|g| ranks::handles(g, f));
        if let Some(reason) = self.unsupported(steps) {
            return Err(PruneError::NotStreamable(format!(
                "cannot stream this pruning: {reason}"
            )));
        }
        // Before the selection's passes, which take minutes on a checkpoint larger than memory.
        check_room(output, self.byte_len())?;
        let locations = self.locations();
        let order = self.write_order();
        let mut roles: HashMap<&str, Role<'_>> = HashMap::new();
        for step in steps {
            if step.names.is_empty() {
                return Err(PruneError::NothingToPrune);
            }
            let amount = step.method.smallest_magnitudes();
            match amount {
                Some(amount) if step.global && group.is_some() => {
                    let group = group.unwrap_or_else(|| unreachable!());
                    let thresholds = ranks::global_thresholds(self, step, amount, group)?;
                    for (n, threshold) in thresholds {
                        roles.insert(n, Role::L1(Share::Own(threshold)));
                    }
                }
                Some(amount) if step.global => {
                    let parts: Vec<RawScores<'_>> = step
                        .names
                        .iter()
                        .map(|n| {
                            let (f, i) = locations[n.as_str()];
                            self.raw(f, &self.files[f].tensors()[i])
                        })
                        .collect();
                    let total: usize = parts
                        .iter()
                        .map(|p| p.bytes.len() / p.kind.elt_size_in_bytes())
                        .sum();
                    let k = amount.to_count(total as i64)?;
                    let threshold = smallest_threshold(&parts, k)?;
                    // Ties go to the first tensors in the step's order; when the output visits
                    // them in another order, each gets its share up front.
                    let in_order = step.names.windows(2).all(|w| order[&w[0]] < order[&w[1]]);
                    if in_order {
                        let shared = std::rc::Rc::new(std::cell::RefCell::new(threshold));
                        for n in &step.names {
                            roles.insert(n, Role::L1(Share::Shared(shared.clone())));
                        }
                    } else {
                        let mut left = threshold.ties();
                        for (n, part) in step.names.iter().zip(&parts) {
                            let take = threshold.ties_in(part).min(left);
                            left -= take;
                            roles.insert(n, Role::L1(Share::Own(threshold.with_ties(take))));
                        }
                    }
                }
                Some(amount) => {
                    for n in &step.names {
                        let (f, i) = locations[n.as_str()];
                        let t = &self.files[f].tensors()[i];
                        // Checked before anything is written, and named: a step over many
                        // tensors can fail on one of them.
                        let k = amount
                            .to_count(t.numel() as i64)
                            .map_err(|e| e.in_tensor(n))?;
                        if mine(f) {
                            roles.insert(n, Role::L1(Share::PerTensor(k)));
                        }
                    }
                }
                // Every tensor's, this rank's or not: a rank draws for the others' tensors too.
                None => {
                    for n in &step.names {
                        roles.insert(n, Role::Method(step.method));
                    }
                }
            }
        }

        // Structured methods that do not draw: every tensor's channels before the write, in
        // write order (the first tensor the method refuses is the one the write would reach).
        let mut structured: Vec<(&&str, &mut Role<'_>)> = roles.iter_mut().collect();
        structured.sort_by_key(|(name, _)| order[**name]);
        for (name, role) in structured {
            let (f, i) = locations[*name];
            if let Role::Method(method) = role {
                if !method.draws_random() && mine(f) {
                    let t = &self.files[f].tensors()[i];
                    self.files[f].check(t)?;
                    if let Some((dim, kept)) = channels(t, &self.raw(f, t), *method)? {
                        *role = Role::Channels(dim, kept);
                    }
                }
            }
        }

        // Per-tensor thresholds: where the data is in memory, all of them before the write, a
        // tensor per core at a time (the write then has the cores to itself); else one tensor
        // ahead of the write, on a thread of their own, so that the pages the selection reads
        // from the disk are still in memory when the write reads them.
        let mut ahead: Vec<(usize, RawScores<'_>, i64)> = roles
            .iter()
            .filter_map(|(n, role)| match role {
                Role::L1(Share::PerTensor(k)) => {
                    let (f, i) = locations[n];
                    Some((order[*n], self.raw(f, &self.files[f].tensors()[i]), *k))
                }
                _ => None,
            })
            .collect();
        ahead.sort_by_key(|(rank, _, _)| *rank);
        let raws: Vec<RawScores<'_>> = ahead.iter().map(|(_, raw, _)| *raw).collect();
        let found = in_memory(&raws).then(|| thresholds_now(&ahead));
        std::thread::scope(|s| {
            let (send, thresholds) =
                std::sync::mpsc::sync_channel(found.as_ref().map_or(0, Vec::len));
            match found {
                Some(found) => {
                    // The receiver is still here: these sends cannot fail.
                    found.into_iter().for_each(|t| drop(send.send(t)));
                }
                // A rendezvous: the next threshold waits for the writer, so the selection is
                // never more than one tensor ahead of the write.
                None => {
                    s.spawn(move || {
                        for (_, raw, k) in ahead {
                            let threshold = on_this_thread(|| smallest_threshold(&[raw], k));
                            let failed = threshold.is_err();
                            // A send fails once the writer has stopped: nothing more is wanted.
                            if send.send(threshold).is_err() || failed {
                                break;
                            }
                        }
                    });
                }
            }
            let mut writer = Writer {
                roles: &roles,
                thresholds,
                scratch: Scratch::default(),
                report: StreamReport::default(),
            };
            let written = match group {
                Some(group) => ranks::write_all(
                    self,
                    output,
                    |f, path| match path {
                        Some(path) => self.write_file(f, path, &mut writer),
                        None => self.draw_for(f, &writer),
                    },
                    group,
                ),
                None => self.write_all(output, &mut writer).map(|files| (files, 1)),
            };
            // The receiver goes with the writer, before the scope waits for the thread: a thread
            // blocked on sending a threshold nobody will take then returns.
            let Writer { report, .. } = writer;
            written.map(|(files, folders)| StreamReport {
                files,
                folders,
                ..report
            })
        })
    }

    /// Writes the output: one file, or the shards and their index in a folder.
    fn write_all(&self, output: &Path, writer: &mut Writer<'_, '_>) -> Result<usize> {
        match &self.index {
            None => {
                atomic_write(output, |tmp| {
                    self.write_file(0, tmp, writer)?;
                    // Before the rename: the selection read the map too.
                    self.unchanged()
                })?;
                Ok(1)
            }
            Some(index) => {
                let index_name = index
                    .path
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("model.safetensors.index.json"));
                let shards = index.shards();
                atomic_write_dir(output, |tmp| -> Result<()> {
                    for (f, shard) in shards.iter().enumerate() {
                        self.write_file(f, &tmp.join(shard), writer)?;
                    }
                    let index_path = tmp.join(&index_name);
                    crate::checkpoint::write_new(&index_path, index.to_json()).map_err(|e| {
                        crate::checkpoint::CheckpointError::io(&index_path, "cannot write", e)
                    })?;
                    // Before the rename: a shard written first may have changed since.
                    self.unchanged()
                })?;
                Ok(shards.len())
            }
        }
    }

    /// The random draws of file `f`'s tensors, which another rank writes: each tensor pruned by
    /// a method that draws is pruned as a tensor of zeros of its shape and dtype, in write
    /// order, so that this rank's generator is where one process's would be after the file.
    fn draw_for(&self, f: usize, writer: &Writer<'_, '_>) -> Result<()> {
        let file = &self.files[f];
        let by_name: HashMap<&str, &MappedTensor> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        for header in file.headers() {
            let t = by_name[header.name.as_str()];
            if let Some(Role::Method(method)) = writer.roles.get(t.name.as_str()) {
                if method.draws_random() {
                    let zeros = Tensor::f_zeros(t.shape.as_slice(), (t.kind, Device::Cpu))?;
                    let _drawn = pruned_whole(&t.name, zeros, *method)?;
                }
            }
        }
        Ok(())
    }

    /// Writes file `f` of the input, pruned, to `path`.
    fn write_file(&self, f: usize, path: &Path, writer: &mut Writer<'_, '_>) -> Result<()> {
        let file = &self.files[f];
        let headers = file.headers();
        let by_name: HashMap<&str, &MappedTensor> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let stats = file.write(path, &headers, |i, out| -> Result<()> {
            let t = by_name[headers[i].name.as_str()];
            file.check(t)?;
            let raw = self.raw(f, t);
            let role = writer.roles.get(t.name.as_str());
            let scratch = &mut writer.scratch;
            let zeros = match role {
                None => write_unchanged(&raw, file.input_range(t), out, path)?,
                Some(Role::Channels(dim, kept)) => {
                    let buffer = output_bytes(&mut scratch.output, t.kind.elt_size_in_bytes());
                    write_channels(&raw, &t.shape, (*dim, kept), buffer, out, path)?
                }
                Some(Role::L1(share)) => match share {
                    Share::Shared(shared) => {
                        write_masked(&raw, &mut shared.borrow_mut(), scratch, out, path)?
                    }
                    Share::Own(threshold) => {
                        write_masked(&raw, &mut threshold.clone(), scratch, out, path)?
                    }
                    Share::PerTensor(_) => {
                        // No message only if the selection's thread panicked, which the scope
                        // then reports.
                        let mut threshold = writer.thresholds.recv().map_err(|_| {
                            PruneError::torch(format!("the selection of '{}' stopped", t.name))
                        })??;
                        write_masked(&raw, &mut threshold, scratch, out, path)?
                    }
                },
                Some(Role::Method(method)) => {
                    let size = t.kind.elt_size_in_bytes();
                    let buffer = output_bytes(&mut scratch.output, size);
                    let streamed = match method.semi_structured() {
                        Some(pattern) => {
                            write_nm(t, &raw, pattern, buffer, &mut scratch.nm, out, path)?
                        }
                        None => match channels(t, &raw, *method)? {
                            Some((dim, kept)) => Some(write_channels(
                                &raw,
                                &t.shape,
                                (dim, &kept),
                                buffer,
                                out,
                                path,
                            )?),
                            None => None,
                        },
                    };
                    match streamed {
                        Some(zeros) => zeros,
                        None => write_pruned_whole(t, &raw, *method, out, path)?,
                    }
                }
            };
            // Stops at the first tensor read from a file that changed, not at the end.
            file.unchanged()?;
            let report = &mut writer.report;
            report.numel += t.numel() as i64;
            report.zeros += zeros;
            if role.is_some() {
                report.pruned_numel += t.numel() as i64;
                report.pruned_zeros += zeros;
            }
            Ok(())
        })?;
        writer.report.writes.add(stats);
        Ok(())
    }
}

/// The per-tensor thresholds of `ahead` (write order, scores, count), in its order: each found on
/// one thread, the tensors spread over libtorch's intra-op thread count.
fn thresholds_now(ahead: &[(usize, RawScores<'_>, i64)]) -> Vec<Result<Threshold>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = (tch::get_num_threads().max(1) as usize).min(ahead.len().max(1));
    let found: Vec<(usize, Result<Threshold>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, raw, k)) = ahead.get(i) else {
                            return mine;
                        };
                        mine.push((i, on_this_thread(|| smallest_threshold(&[*raw], *k))));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    // A thread that panicked left its tensors out: each missing one is an error in its place.
    let mut slots: Vec<Option<Result<Threshold>>> = ahead.iter().map(|_| None).collect();
    for (i, threshold) in found {
        slots[i] = Some(threshold);
    }
    slots
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| Err(PruneError::torch("a selection thread stopped".to_string())))
        })
        .collect()
}

/// The state of one streamed write, carried from file to file.
struct Writer<'r, 'a> {
    roles: &'r HashMap<&'a str, Role<'a>>,
    /// The per-tensor thresholds, in write order.
    thresholds: std::sync::mpsc::Receiver<Result<Threshold>>,
    scratch: Scratch,
    report: StreamReport,
}

/// What happens to a tensor.
enum Role<'a> {
    /// Its L1 selection.
    L1(Share),
    /// Another method: N:M and methods that draw a block or a tensor at a time as it is
    /// written, anything that does not stream on the whole tensor in memory.
    Method(&'a dyn PruningMethod),
    /// A structured method's channels along a dimension, found before the write: kept or not.
    Channels(usize, Vec<bool>),
}

/// A tensor's part of an L1 selection.
enum Share {
    /// The step's threshold, whose tie allowance the tensors use up in write order.
    Shared(std::rc::Rc<std::cell::RefCell<Threshold>>),
    /// Its own allowance of ties.
    Own(Threshold),
    /// A per-tensor selection of this many entries, found by the selection's thread just before
    /// the tensor is written.
    PerTensor(i64),
}

/// `tensor` (the one named `name`) pruned by `method` and made permanent, in memory, as the
/// in-memory path prunes it (the same checks, the same draws); contiguous.
fn pruned_whole(name: &str, tensor: Tensor, method: &dyn PruningMethod) -> Result<Tensor> {
    let vs = VarStore::new(Device::Cpu);
    let _ = add_dotted(&vs, "t", tensor, true);
    let pruner = Pruner::with_bool_masks(&vs);
    pruner
        .prune_and_remove("t", method, None)
        .map_err(|e| e.in_tensor(name))?;
    Ok(vs
        .variables()
        .remove("t")
        .ok_or_else(|| PruneError::UnknownTensor(name.to_string()))?
        .f_contiguous()?)
}

/// A tensor not pruned: its bytes as they are, from the mapping (booleans normalised to 0/1,
/// as the in-memory reader normalises them), or copied from the file in the kernel where the
/// file says where they lie (`range`) and the output can.
fn write_unchanged(
    raw: &RawScores<'_>,
    range: Option<InputRange<'_>>,
    out: &mut dyn TensorSink,
    path: &Path,
) -> Result<i64> {
    if raw.kind == Kind::Bool {
        let mut zeros = 0;
        for piece in raw.bytes.chunks(WRITE_CHUNK) {
            let normal: Vec<u8> = piece.iter().map(|&b| (b != 0) as u8).collect();
            zeros += count_zeros(&normal, Kind::Bool);
            out.write_all(&normal).map_err(|e| io_error(path, e))?;
        }
        return Ok(zeros);
    }
    let mut zeros = 0;
    match range {
        Some(range) => {
            // The count reads the mapped bytes; the copy does not need them in memory.
            zeros = count_zeros(raw.bytes, raw.kind);
            out.write_unchanged(range).map_err(|e| io_error(path, e))?;
        }
        None => {
            for piece in raw.bytes.chunks(WRITE_CHUNK * 4) {
                zeros += count_zeros(piece, raw.kind);
                out.write_all(piece).map_err(|e| io_error(path, e))?;
            }
        }
    }
    Ok(zeros)
}

/// An L1-pruned tensor: `value * mask` a chunk at a time, the bytes the in-memory path writes.
/// Finite entries are masked in Rust ([`Threshold::apply_finite`]: the decision, the product
/// and the zero count in one pass over the mapped data); a piece holding an infinity or a NaN
/// is multiplied by libtorch instead, over the same [`MASK_PIECE`] entries and with the same
/// call the in-memory path makes (the boolean mask cast to the dtype, then `mul_out`), so NaN
/// payloads and `inf * 0` come out the same.
fn write_masked(
    raw: &RawScores<'_>,
    threshold: &mut Threshold,
    scratch: &mut Scratch,
    out: &mut dyn TensorSink,
    path: &Path,
) -> Result<i64> {
    let size = raw.kind.elt_size_in_bytes();
    let numel = raw.bytes.len() / size;
    let (spare, keep) = scratch.buffers(size);
    write_entries(out, numel, size, 1, spare, path, |start, dst| {
        let n = dst.len() / size;
        let mut zeros = 0;
        let mut at = 0;
        while at < n {
            // Pieces end where the in-memory path's do: at multiples of MASK_PIECE entries.
            let first = start + at;
            let len = (MASK_PIECE - first % MASK_PIECE).min(n - at);
            let piece = &mut dst[at * size..(at + len) * size];
            zeros += match threshold.apply_finite(raw, first, piece) {
                Some(z) => z as i64,
                None => {
                    let keep = &mut keep[..len];
                    threshold.keep(raw, first, keep);
                    multiply_by_libtorch(raw, first, keep, piece)?
                }
            };
            at += len;
        }
        Ok((n, zeros))
    })
}

/// `value * keep` for the entries `first..first + keep.len()` of `raw`, into `out`, by
/// libtorch as the in-memory path computes it; returns the zeros written.
fn multiply_by_libtorch(
    raw: &RawScores<'_>,
    first: usize,
    keep: &[bool],
    out: &mut [u8],
) -> Result<i64> {
    let size = raw.kind.elt_size_in_bytes();
    let n = keep.len() as i64;
    // SAFETY: the three blobs outlive the tensors over them (dropped at the end of this call);
    // the mapped input is only read (the mapping is read-only: a write would fault, not
    // corrupt), `keep` holds valid bools, `out` is this call's to write, `n` elements long,
    // and the selection checked the input's alignment (`out` is aligned by `Scratch`).
    let (input, keep, product) = unsafe {
        (
            Tensor::f_from_blob(
                raw.bytes[first * size..].as_ptr(),
                &[n],
                &[1],
                raw.kind,
                Device::Cpu,
            )?,
            Tensor::f_from_blob(
                keep.as_ptr() as *const u8,
                &[n],
                &[1],
                Kind::Bool,
                Device::Cpu,
            )?,
            Tensor::f_from_blob(out.as_mut_ptr(), &[n], &[1], raw.kind, Device::Cpu)?,
        )
    };
    let _ = input.f_mul_out(&product, &keep.f_to_kind(raw.kind)?)?;
    Ok(count_zeros(out, raw.kind))
}

/// The buffers of the masked writes, allocated once per run: allocating them per chunk let
/// glibc keep tens of MB of freed memory (its mmap threshold adapts upward).
#[derive(Default)]
struct Scratch {
    /// One chunk of output, as u64 so that it is aligned for every dtype.
    output: Vec<u64>,
    /// One piece's decisions, for the pieces libtorch multiplies.
    keep: Vec<bool>,
    /// N:M's buffers.
    nm: NmScratch,
}

impl Scratch {
    /// The output buffer ([`WRITE_CHUNK`] entries of `size` bytes) and the decisions' buffer.
    fn buffers(&mut self, size: usize) -> (&mut [u8], &mut [bool]) {
        if self.keep.len() < MASK_PIECE {
            self.keep = vec![true; MASK_PIECE];
        }
        (output_bytes(&mut self.output, size), &mut self.keep)
    }
}

/// [`WRITE_CHUNK`] entries of `size` bytes in `output`, grown once to the largest dtype seen.
fn output_bytes(output: &mut Vec<u64>, size: usize) -> &mut [u8] {
    let words = WRITE_CHUNK * size / 8;
    if output.len() < words {
        *output = vec![0; words];
    }
    // SAFETY: plain bytes of the vector's initialized u64s.
    unsafe { std::slice::from_raw_parts_mut(output.as_mut_ptr() as *mut u8, words * 8) }
}

/// A tensor pruned by another method: read whole into memory (one tensor's working set) and
/// pruned by the in-memory path's own code, [`Pruner::prune_and_remove`] in a store of its own.
fn write_pruned_whole(
    t: &MappedTensor,
    raw: &RawScores<'_>,
    method: &dyn PruningMethod,
    out: &mut dyn TensorSink,
    path: &Path,
) -> Result<i64> {
    let tensor = Tensor::f_empty(t.shape.as_slice(), (t.kind, Device::Cpu))?;
    // SAFETY: a fresh contiguous tensor of exactly the mapped tensor's byte size.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.bytes.as_ptr(),
            tensor.data_ptr() as *mut u8,
            raw.bytes.len(),
        );
    }
    let pruned = pruned_whole(&t.name, tensor, method)?;
    // SAFETY: contiguous CPU tensor of the mapped tensor's shape and dtype.
    let bytes =
        unsafe { std::slice::from_raw_parts(pruned.data_ptr() as *const u8, raw.bytes.len()) };
    let zeros = count_zeros(bytes, t.kind);
    out.write_all(bytes).map_err(|e| io_error(path, e))?;
    Ok(zeros)
}
