//! An archive written back with weights of new shapes (channels removed by `shrink`): the
//! program (`models/<model>.json`) replaced by the caller's, each storage of a weight that
//! changed shape rewritten whole from its new values, that weight's `tensor_meta` in the weights
//! config given its new sizes and strides, every other entry the input's, byte for byte.
//!
//! A weight can change shape only where its storage is its own and it is all of it, laid out
//! row-major (what `torch.export.save` writes for every weight but tied ones):
//! [`Pt2Archive::reshape_refusal`] says why another cannot, so that a caller keeps its shape.

use super::Pt2Archive;
use crate::checkpoint::atomic::atomic_write;
use crate::checkpoint::error::{first_line, shown, CheckpointError};
use crate::checkpoint::input_file::open_input;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::path::Path;
use tch::{Device, Tensor};

/// The largest program read (`models/<model>.json`, about 1.5 KB per node): a bound against an
/// entry asking for an absurd allocation, far above any real model's.
const MAX_PROGRAM_BYTES: u64 = 1 << 30;

/// The largest weights config read again for a rewrite (as the reader's bound).
const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// Row-major strides of `size`.
fn row_major(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * size[d + 1].max(1);
    }
    strides
}

impl Pt2Archive {
    /// The program as the archive holds it (`models/<model>.json`: the graph, its signature
    /// and every value's meta), read again from the file, which must not have changed since
    /// [`Pt2Archive::read`].
    pub fn program(&self) -> Result<Vec<u8>, CheckpointError> {
        let name = format!("{}models/{}.json", self.root, self.model);
        self.read_entry(&name, MAX_PROGRAM_BYTES)
    }

    /// One entry of the archive read again (its name in full), after checking that the file
    /// is the one read.
    fn read_entry(&self, name: &str, max: u64) -> Result<Vec<u8>, CheckpointError> {
        use crate::checkpoint::archive::{Opened, TorchArchive};
        let reader = BufReader::new(open_input(&self.path)?);
        let changed = || {
            CheckpointError::CorruptArchive {
            path: self.path.clone(),
            reason: "it changed since it was read (its entries differ): run again on a file nothing is writing".into(),
        }
        };
        let mut archive = match TorchArchive::open(reader, &self.path)? {
            Opened::Archive(archive) => archive,
            Opened::NotZip(_) => return Err(changed()),
        };
        if archive.stamps()? != self.stamps {
            return Err(changed());
        }
        archive.read(name, max)
    }

    /// Why the weight `name` cannot be written with another shape, or `None` when it can: its
    /// storage is its own and it is all of it, row-major. A tied weight, a view of part of a
    /// storage, an empty storage (zeros) or another layout keep their shapes.
    pub fn reshape_refusal(&self, name: &str) -> Option<String> {
        let Some(w) = self.weights.iter().find(|w| w.name == name) else {
            return Some("the archive has no such weight".into());
        };
        let s = &self.storages[w.storage];
        if let Some(other) = self
            .weights
            .iter()
            .find(|o| o.storage == w.storage && o.name != w.name)
        {
            return Some(format!(
                "its storage is shared with {} in the archive",
                shown(&other.name)
            ));
        }
        let numel: i64 = w.view.size.iter().product();
        let whole = w.view.offset == 0
            && numel.saturating_mul(s.kind.elt_size_in_bytes() as i64) == s.nbytes as i64;
        if s.nbytes == 0 || !whole {
            return Some("it is not the whole of its storage in the archive".into());
        }
        if numel > 0 && w.view.stride != row_major(&w.view.size) {
            return Some(format!(
                "its strides {:?} are not row-major in the archive",
                w.view.stride
            ));
        }
        None
    }

    /// Writes the archive to `path` with `tensors` (every parameter and buffer by name, on any
    /// device, each of the dtype it was read with) and `program` in place of
    /// `models/<model>.json`. A tensor of the shape it was read with is written as
    /// [`Pt2Archive::write`] writes it; one of another shape must be one
    /// [`Pt2Archive::reshape_refusal`] allows: its storage is written row-major from it, and
    /// its `tensor_meta` in the weights config gets its sizes and strides. Every other entry is
    /// the input's, byte for byte; the weights config keeps its order. Atomic; `path` may be
    /// the input.
    ///
    /// The caller answers for `program` matching the new shapes (this writer checks the
    /// weights, not the graph).
    pub fn write_reshaped(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(String, Tensor)],
        program: &[u8],
    ) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let invalid = |name: &str, reason: String| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: shown(name),
            reason,
        };
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        // Entry name -> the new bytes of a reshaped storage.
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        let mut metas: HashMap<&str, Vec<i64>> = HashMap::new();
        for w in &self.weights {
            let t = given.get(w.name.as_str()).ok_or_else(|| {
                invalid(
                    &w.name,
                    "the archive's program has it, the tensors to write do not".into(),
                )
            })?;
            let kind = self.storages[w.storage].kind;
            if t.kind() != kind {
                return Err(invalid(
                    &w.name,
                    format!("it is {:?}, the archive holds {kind:?}", t.kind()),
                ));
            }
            if t.size() == w.view.size {
                continue;
            }
            if let Some(why) = self.reshape_refusal(&w.name) {
                return Err(invalid(&w.name, format!("its shape cannot change: {why}")));
            }
            let bytes = host_bytes(t).map_err(|e| {
                invalid(
                    &w.name,
                    format!("cannot write it: {}", first_line(&e.to_string())),
                )
            })?;
            storages.insert(self.storages[w.storage].entry.clone(), bytes);
            metas.insert(w.name.as_str(), t.size());
        }
        let config_name = format!(
            "{}data/weights/{}_weights_config.json",
            self.root, self.model
        );
        let config = self.read_entry(&config_name, MAX_CONFIG_BYTES)?;
        let config = self.rewrite_config(&config, &metas, &config_name)?;
        let program_name = format!("{}models/{}.json", self.root, self.model);
        // The storages that keep their size: rewritten where a view over them changed.
        let mut over: HashMap<&str, Vec<(usize, &Tensor)>> = HashMap::new();
        for (i, w) in self.weights.iter().enumerate() {
            let entry = self.storages[w.storage].entry.as_str();
            if !storages.contains_key(entry) {
                over.entry(entry)
                    .or_default()
                    .push((i, given[w.name.as_str()]));
            }
        }
        atomic_write(path, |tmp| {
            let reader = BufReader::new(open_input(&self.path)?);
            self.copy_archive(reader, tmp, path, |archive, stamp, out| {
                let write = |out: &mut dyn Write, bytes: &[u8]| {
                    out.write_all(bytes)
                        .map_err(|e| CheckpointError::io(path, "cannot write", e))
                };
                if let Some(bytes) = storages.get(&stamp.name) {
                    write(out, bytes)?;
                } else if stamp.name == config_name {
                    write(out, &config)?;
                } else if stamp.name == program_name {
                    write(out, program)?;
                } else if let Some(views) = over.get(stamp.name.as_str()) {
                    if stamp.size == 0 {
                        return Ok(false);
                    }
                    let bytes = self.storage_bytes(archive, &stamp.name, views, path)?;
                    write(out, &bytes)?;
                } else {
                    return Ok(false);
                }
                Ok::<bool, CheckpointError>(true)
            })
            .map(drop)
        })
    }

    /// The weights config with the `tensor_meta` of each name in `sizes` given those sizes,
    /// row-major strides and offset 0; the names in the file's order.
    fn rewrite_config(
        &self,
        config: &[u8],
        sizes: &HashMap<&str, Vec<i64>>,
        entry: &str,
    ) -> Result<Vec<u8>, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::CorruptArchive {
            path: self.path.clone(),
            reason: format!("{}: {reason}", shown(entry)),
        };
        let mut value: serde_json::Value = serde_json::from_slice(config)
            .map_err(|e| corrupt(first_line(&e.to_string()).to_string()))?;
        let entries = value
            .get_mut("config")
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| corrupt("it has no config object".into()))?;
        let ints = |v: &[i64]| {
            serde_json::Value::Array(
                v.iter()
                    .map(|&n| serde_json::json!({ "as_int": n }))
                    .collect(),
            )
        };
        for (name, size) in sizes {
            let meta = entries
                .get_mut(*name)
                .and_then(|m| m.get_mut("tensor_meta"))
                .and_then(serde_json::Value::as_object_mut)
                .ok_or_else(|| corrupt(format!("no tensor_meta for {}", shown(name))))?;
            meta.insert("sizes".into(), ints(size));
            meta.insert("strides".into(), ints(&row_major(size)));
            meta.insert("storage_offset".into(), serde_json::json!({ "as_int": 0 }));
        }
        // Written by hand around the entries, so that the names keep the file's order (the
        // state dict's), which a JSON object value would sort.
        let mut out = b"{\"config\": {".to_vec();
        for (i, w) in self.weights.iter().enumerate() {
            let meta = entries
                .get(&w.name)
                .ok_or_else(|| corrupt(format!("no entry for {}", shown(&w.name))))?;
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let pair = serde_json::to_string(&w.name)
                .and_then(|k| Ok(format!("{k}: {}", serde_json::to_string(meta)?)))
                .map_err(|e| corrupt(e.to_string()))?;
            out.extend_from_slice(pair.as_bytes());
        }
        out.extend_from_slice(b"}}");
        Ok(out)
    }
}

/// A tensor's elements as row-major little-endian bytes.
fn host_bytes(t: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let raw = t.f_view_dtype(tch::Kind::Uint8)?.f_reshape([-1])?;
    let mut bytes = vec![0u8; n];
    raw.f_copy_data_u8(&mut bytes, n)?;
    Ok(bytes)
}
