//! Where a run reads and writes: a model file, or a model folder (a Hugging Face folder with
//! one `model.safetensors` or with shards and their index, or a shard index named directly),
//! whose output is a folder that carries every file that is not a weight and appears whole or
//! not at all.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch_prune::checkpoint::{
    atomic_write_dir, check_folder_destination, Carried, HfFolder, HfWeights, ShardIndex,
};

/// A run's input and output.
pub struct Io {
    /// What the model is read from: the input file, a folder's `model.safetensors`, or an index.
    pub weights: PathBuf,
    /// The input's folder, when the input is a model folder or a shard index.
    pub folder: Option<HfFolder>,
    /// Where the output goes: a file, or for a folder input, a folder.
    pub output: PathBuf,
    /// What the output folder carries besides the weights.
    pub carried: Carried,
}

/// The name of the folder the shards are written to inside the output's temporary folder
/// before they are moved up: a shard's name never starts with a dot ([`ShardIndex::read`]).
const SHARDS: &str = ".tch-prune-shards";

impl Io {
    /// Resolves `input` and `output`, checking the output folder up front (new or empty, in an
    /// existing folder). For a folder input, `-o` naming an index
    /// (`out/model.safetensors.index.json`) means the folder that holds it. Without an output
    /// (a dry run), only the input.
    pub fn resolve(input: &Path, output: Option<&Path>) -> Result<Io> {
        let output_given = output.is_some();
        let output = output.unwrap_or(Path::new(""));
        let folder = if input.is_dir() {
            Some(HfFolder::open(input)?)
        } else if ShardIndex::locate(input).is_some() {
            Some(HfFolder::of_index(input))
        } else {
            None
        };
        let Some(folder) = folder else {
            return Ok(Io {
                weights: input.to_path_buf(),
                folder: None,
                output: output.to_path_buf(),
                carried: Carried::default(),
            });
        };
        let output = match output_given {
            true => output_folder(output)?,
            false => PathBuf::new(),
        };
        if output_given {
            check_folder_destination(&output)?;
        }
        let carried = folder.carried()?;
        Ok(Io {
            weights: folder.weights_path().to_path_buf(),
            folder: Some(folder),
            output,
            carried,
        })
    }

    /// Every file the run reads its model from, which no destination may name: the input file;
    /// for a model folder or a shard index, the index, every shard and every file the output
    /// carries (each joined to the folder).
    pub fn read_files(&self) -> Result<Vec<PathBuf>> {
        let Some(folder) = &self.folder else {
            return Ok(vec![self.weights.clone()]);
        };
        let carried = self
            .carried
            .carried
            .iter()
            .map(|name| folder.dir.join(name));
        Ok(self.weight_files()?.into_iter().chain(carried).collect())
    }

    /// The files the weights are read from: the input file, or a folder's weights file, or its
    /// index and every shard.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let Some(folder) = &self.folder else {
            return Ok(vec![self.weights.clone()]);
        };
        Ok(folder
            .weight_files()?
            .iter()
            .map(|name| folder.dir.join(name))
            .collect())
    }

    /// Whether the weights are shards.
    pub fn is_sharded(&self) -> bool {
        self.folder.as_ref().is_some_and(HfFolder::is_sharded)
    }

    /// Writes the output. `write` writes the weights at the path it is given: the output file,
    /// or, for a folder input, inside the output's temporary folder, a file of the input's name
    /// (one `model.safetensors`) or a folder that does not exist yet (shards and their index).
    /// The carried files are copied beside them, and the folder is renamed into place.
    pub fn write<T>(&self, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let Some(folder) = &self.folder else {
            return write(&self.output);
        };
        atomic_write_dir(&self.output, |tmp| -> Result<T> {
            let value = match &folder.weights {
                HfWeights::Single(file) => {
                    write(&tmp.join(file.file_name().context("a weights file")?))?
                }
                HfWeights::Sharded(_) => {
                    let shards = tmp.join(SHARDS);
                    let value = write(&shards)?;
                    for entry in std::fs::read_dir(&shards)? {
                        let entry = entry?;
                        std::fs::rename(entry.path(), tmp.join(entry.file_name()))?;
                    }
                    std::fs::remove_dir(&shards)?;
                    value
                }
            };
            folder.copy_carried(&self.carried.carried, tmp)?;
            Ok(value)
        })
    }

    /// What the summary says of the carried files: nothing for a file, else their count and
    /// the entries left out with why.
    pub fn carried_summary(&self) -> String {
        if self.folder.is_none() {
            return String::new();
        }
        // Names come from the folder's listing: a newline or a terminal escape in one must not
        // break the summary's line or reach the terminal.
        let shown = |name: &str| crate::text::escaped_and_cut(name, 200);
        let mut text = format!(
            "; carried {} other files{}",
            self.carried.carried.len(),
            if self.carried.carried.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = self.carried.carried.iter().map(|n| shown(n)).collect();
                format!(" ({})", names.join(", "))
            }
        );
        for (name, why) in &self.carried.left_out {
            text.push_str(&format!("; left out {}: {why}", shown(name)));
        }
        text
    }
}

/// The output folder `-o` names: itself, or the folder of an index it names.
fn output_folder(output: &Path) -> Result<PathBuf> {
    let names_index = output
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"));
    if !names_index || output.is_dir() {
        return Ok(output.to_path_buf());
    }
    match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir.to_path_buf()),
        _ => bail!(
            "{}: the output of a model folder is a folder: name it (-o out, or -o out/{})",
            output.display(),
            output.display()
        ),
    }
}

/// Refuses, before reading them, shards that hold more than the memory available now
/// (`MemAvailable`): the in-memory path reads every tensor, and the streaming path, which
/// needs no such memory, is what such a checkpoint takes.
pub fn check_memory(index: &ShardIndex) -> Result<()> {
    let folder = index.folder();
    let mut bytes: u64 = 0;
    for shard in index.shards() {
        let path = folder.join(&shard);
        bytes += std::fs::metadata(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?
            .len();
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    if let Some(available) = available {
        if bytes > available {
            bail!(
                "{}: the shards hold {:.1} GB and {:.1} GB of memory is available, and this run is in memory: run it without --in-memory and --state-out, and with one step per tensor, so that it streams",
                index.path.display(),
                bytes as f64 / 1e9,
                available as f64 / 1e9
            );
        }
    }
    Ok(())
}
