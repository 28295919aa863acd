//! Sharded safetensors checkpoints: a `model.safetensors.index.json` (Hugging Face's layout)
//! naming, for each tensor, the shard file that holds it.

use super::error::{first_line, shown, CheckpointError};
use super::input_file::{read_input, MAX_SMALL_FILE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed `*.safetensors.index.json`.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    /// The index file.
    pub path: PathBuf,
    /// Its `metadata` object (e.g. `{"total_size": ...}`), kept as written.
    pub metadata: serde_json::Value,
    /// Tensor name to shard file name (in the index's folder).
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Whether `path` looks like a shard index: a file whose name ends in `.index.json`, or a
    /// folder holding exactly one `*.safetensors.index.json`.
    pub fn locate(path: impl AsRef<Path>) -> Option<PathBuf> {
        let path = path.as_ref();
        if path.is_dir() {
            let mut found = std::fs::read_dir(path)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".safetensors.index.json"))
                });
            let first = found.next()?;
            return found.next().is_none().then_some(first);
        }
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"))
            .then(|| path.to_path_buf())
    }

    /// Reads and checks an index: a JSON object with a `weight_map` of plain file names (no
    /// folders: a shard outside the index's folder is refused).
    pub fn read(path: impl AsRef<Path>) -> Result<ShardIndex, CheckpointError> {
        let path = path.as_ref();
        let bad = |reason: String| CheckpointError::InvalidIndex {
            path: path.to_path_buf(),
            reason: first_line(&reason),
        };
        let bytes = read_input(path, MAX_SMALL_FILE, "a shard index")?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let metadata = object
            .remove("metadata")
            .unwrap_or(serde_json::Value::Object(Default::default()));
        let map = object
            .remove("weight_map")
            .ok_or_else(|| bad("it has no weight_map".into()))?;
        let weight_map: BTreeMap<String, String> = serde_json::from_value(map)
            .map_err(|e| bad(format!("weight_map is not a map of names to files: {e}")))?;
        if weight_map.is_empty() {
            return Err(bad("its weight_map is empty".into()));
        }
        for (name, file) in &weight_map {
            let plain = Path::new(file)
                .file_name()
                .is_some_and(|f| f == std::ffi::OsStr::new(file));
            if !plain || file.starts_with('.') {
                return Err(bad(format!(
                    "tensor '{}' is mapped to '{}', not a plain file name in the index's folder",
                    shown(name),
                    shown(file)
                )));
            }
        }
        Ok(ShardIndex {
            path: path.to_path_buf(),
            metadata,
            weight_map,
        })
    }

    /// The shard file names, sorted (`model-00001-of-00004.safetensors` first): the order in
    /// which tensors of several shards are taken.
    pub fn shards(&self) -> Vec<String> {
        let mut shards: Vec<String> = self.weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        shards
    }

    /// The folder of the index, where its shards are.
    pub fn folder(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The index as JSON text, `metadata` then `weight_map` (sorted), indented by two spaces as
    /// `transformers` writes it.
    pub fn to_json(&self) -> String {
        let value = serde_json::json!({
            "metadata": self.metadata,
            "weight_map": self.weight_map,
        });
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }
}
