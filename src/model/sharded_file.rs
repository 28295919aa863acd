//! A sharded safetensors checkpoint (a `*.safetensors.index.json` and its shards) read into one
//! [`ModelFile`] and written back as the same shards: what the in-memory path does with a
//! sharded checkpoint (iterative plans on one tensor, the reparametrized state), where the
//! streaming path cannot.

use super::model_file::{add_saved_aliases, state_contents, ModelFile};
use crate::checkpoint::{self, CheckpointError, Format, ShardIndex};
use crate::error::Result;
use crate::prune::pruner::Pruner;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Tensor};

impl ModelFile {
    /// Reads every shard of `index` onto `device`: one model whose tensors are in the
    /// checkpoint's order (shards in file-name order, each in its file's order), as
    /// [`StreamedModel::parameters`](crate::model::StreamedModel::parameters) lists them. Every
    /// tensor is read into memory.
    ///
    /// ```
    /// use tch_prune::checkpoint::ShardIndex;
    /// use tch_prune::model::ModelFile;
    /// # let dir = tempfile::tempdir()?;
    /// # let w = tch::Tensor::ones([4, 4], tch::kind::FLOAT_CPU);
    /// # tch::Tensor::write_safetensors(&[("a.weight", &w)], dir.path().join("s1.safetensors"))?;
    /// # tch::Tensor::write_safetensors(&[("b.weight", &w)], dir.path().join("s2.safetensors"))?;
    /// # std::fs::write(dir.path().join("model.safetensors.index.json"),
    /// #     r#"{"weight_map": {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}}"#)?;
    /// let index = ShardIndex::read(dir.path().join("model.safetensors.index.json"))?;
    /// let model = ModelFile::open_sharded(&index, tch::Device::Cpu)?;
    /// assert_eq!(model.parameters().len(), 2);
    /// let out = dir.path().join("out");
    /// std::fs::create_dir(&out)?;
    /// model.save_sharded(&out, &index, &model.pruner()?)?;
    /// assert!(out.join("s2.safetensors").exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_sharded(index: &ShardIndex, device: Device) -> Result<Self> {
        let folder = index.folder();
        let mut tensors = Vec::new();
        for shard in index.shards() {
            let path = folder.join(&shard);
            let mut part = checkpoint::read_safetensors(&path)?;
            for (name, _) in &part {
                if index.weight_map.get(name) != Some(&shard) {
                    return Err(CheckpointError::InvalidIndex {
                        path: index.path.clone(),
                        reason: format!(
                            "shard '{shard}' holds '{name}', which the index maps elsewhere or not at all"
                        ),
                    }
                    .into());
                }
            }
            add_saved_aliases(&mut part, &checkpoint::read_safetensors_metadata(&path)?);
            tensors.append(&mut part);
        }
        // As the streamed reader: an index naming a tensor no shard holds is refused, not
        // written back naming it still.
        let held: std::collections::HashSet<&str> =
            tensors.iter().map(|(name, _)| name.as_str()).collect();
        if let Some(missing) = index.weight_map.keys().find(|n| !held.contains(n.as_str())) {
            return Err(CheckpointError::InvalidIndex {
                path: index.path.clone(),
                reason: format!(
                    "it maps '{missing}' to '{}', which does not hold it: a shard lacks a tensor the index names",
                    index.weight_map[missing]
                ),
            }
            .into());
        }
        let (contents, ties) = state_contents(tensors, device)?;
        Ok(ModelFile {
            format: Format::Safetensors,
            contents,
            ties,
        })
    }

    /// Writes the model as the shards of `index` into the folder `dir` (which exists): each
    /// tensor in the shard the index maps it to (a pruned tensor the input held as
    /// `<name>_orig` goes where that was), and an index of the same name whose `total_size` is
    /// the bytes written. Each shard is written atomically; the caller makes the folder appear
    /// whole ([`atomic_write_dir`](crate::checkpoint::atomic_write_dir)).
    pub fn save_sharded(&self, dir: &Path, index: &ShardIndex, pruner: &Pruner) -> Result<()> {
        let mut shards: BTreeMap<&str, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, tensor) in self.tensors(pruner) {
            if self.ties.contains_key(&name) {
                continue;
            }
            let shard = index
                .weight_map
                .get(&name)
                .or_else(|| index.weight_map.get(&format!("{name}_orig")))
                .ok_or_else(|| CheckpointError::InvalidIndex {
                    path: index.path.clone(),
                    reason: format!("it maps no shard for '{name}'"),
                })?;
            shards
                .entry(shard.as_str())
                .or_default()
                .push((name, tensor));
        }
        let mut weight_map = BTreeMap::new();
        let mut total: u64 = 0;
        for (shard, tensors) in &shards {
            // The ties whose kept name is in this shard, as `save_model` records them.
            let kept: HashMap<&str, ()> = tensors.iter().map(|(n, _)| (n.as_str(), ())).collect();
            let ties: HashMap<String, String> = self
                .ties
                .iter()
                .filter(|(_, c)| kept.contains_key(c.as_str()))
                .map(|(a, c)| (a.clone(), c.clone()))
                .collect();
            checkpoint::write_safetensors_with_metadata(dir.join(shard), tensors, &ties)?;
            for (name, tensor) in tensors {
                total += (tensor.numel() * tensor.kind().elt_size_in_bytes()) as u64;
                weight_map.insert(name.clone(), shard.to_string());
            }
        }
        let mut metadata = index.metadata.clone();
        if let Some(object) = metadata.as_object_mut() {
            object.insert("total_size".into(), total.into());
        }
        let written = ShardIndex {
            path: dir.join(index.path.file_name().unwrap_or_default()),
            metadata,
            weight_map,
        };
        crate::checkpoint::write_new(&written.path, written.to_json())
            .map_err(|e| CheckpointError::io(&written.path, "cannot write", e))?;
        Ok(())
    }
}
