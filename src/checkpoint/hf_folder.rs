//! Hugging Face model folders, as `save_pretrained` writes them: the weights in one
//! `model.safetensors` or in shards named by a `*.safetensors.index.json`, beside the files that
//! are not weights (`config.json`, `generation_config.json`, the tokenizer's files, a README, a
//! chat template). A pruned copy of such a folder is a folder again, and carries those files as
//! they are: `from_pretrained` needs them.

use super::error::{shown, CheckpointError};
use super::input_file::open_input;
use super::shard_index::ShardIndex;
use super::temp_file::check_room;
use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Extensions of weight files in formats other than safetensors (`pytorch_model.bin`, a GGUF
/// export): copies of the weights that a pruned folder must not carry unpruned.
const OTHER_WEIGHTS: &[&str] = &[
    "bin",
    "pt",
    "pth",
    "ckpt",
    "h5",
    "msgpack",
    "gguf",
    "onnx",
    "safetensors",
    "pt2",
    "npz",
];

/// A Hugging Face model folder: where its weights are, and what else it holds.
///
/// ```
/// use tch_prune::checkpoint::{HfFolder, HfWeights};
/// # let dir = tempfile::tempdir()?;
/// # let w = tch::Tensor::zeros([2, 2], tch::kind::FLOAT_CPU);
/// # tch::Tensor::write_safetensors(&[("fc.weight", &w)], dir.path().join("model.safetensors"))?;
/// std::fs::write(dir.path().join("config.json"), "{}")?;
/// let folder = HfFolder::open(dir.path())?;
/// assert!(matches!(folder.weights, HfWeights::Single(_)));
/// assert_eq!(folder.carried()?.carried, ["config.json"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct HfFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its weights.
    pub weights: HfWeights,
}

/// Where a model folder's weights are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfWeights {
    /// One safetensors file (`model.safetensors`).
    Single(PathBuf),
    /// Shards named by this `*.safetensors.index.json`.
    Sharded(PathBuf),
}

/// What a copy of the folder takes besides the weights ([`HfFolder::carried`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Regular files (or links to one) copied as they are, by name, sorted.
    pub carried: Vec<String>,
    /// Entries left out, each with the reason: folders, pipes and devices, links leading out
    /// of the folder (but for a Hugging Face cache snapshot's links to its blobs), and weights
    /// in another format, which would be copies of the weights left unpruned.
    pub left_out: Vec<(String, &'static str)>,
}

impl HfFolder {
    /// Reads the folder's listing: its weights are the one `*.safetensors.index.json` it holds
    /// (sharded), else `model.safetensors`, else its one `*.safetensors` file. Anything else is
    /// refused on one line that says what the folder lacks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        let names = list(dir)?;
        let refuse = |reason: String| CheckpointError::ModelFolder {
            path: dir.to_path_buf(),
            reason,
        };
        let indexes: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(".safetensors.index.json"))
            .collect();
        let weights = match indexes.as_slice() {
            [index] => HfWeights::Sharded(dir.join(index)),
            [] => {
                let files: Vec<&String> = names
                    .iter()
                    .filter(|n| n.ends_with(".safetensors"))
                    .collect();
                match files.as_slice() {
                    _ if names.iter().any(|n| n == "model.safetensors") => {
                        HfWeights::Single(dir.join("model.safetensors"))
                    }
                    [one] => HfWeights::Single(dir.join(one)),
                    [] => return Err(refuse("it holds no model.safetensors and no *.safetensors.index.json (weights saved as pytorch_model.bin: re-save them with save_pretrained(..., safe_serialization=True))".into())),
                    _ => return Err(refuse(format!("it holds {} safetensors files and no index naming them as shards: name the file to prune", files.len()))),
                }
            }
            _ => {
                return Err(refuse(format!(
                    "it holds {} shard indexes ({}): name the index to prune",
                    indexes.len(),
                    indexes
                        .iter()
                        .map(|n| shown(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            weights,
        })
    }

    /// The folder holding a shard index, with that index as its weights (a user who names the
    /// index of a model folder means the folder).
    pub fn of_index(index: impl AsRef<Path>) -> Self {
        let index = index.as_ref().to_path_buf();
        let dir = match index.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        HfFolder {
            dir,
            weights: HfWeights::Sharded(index),
        }
    }

    /// The file the weights are read through: the single file, or the index.
    pub fn weights_path(&self) -> &Path {
        match &self.weights {
            HfWeights::Single(p) | HfWeights::Sharded(p) => p,
        }
    }

    /// Whether the weights are sharded.
    pub fn is_sharded(&self) -> bool {
        matches!(self.weights, HfWeights::Sharded(_))
    }

    /// The names of the weight files: the single file, or the index and its shards.
    pub fn weight_files(&self) -> Result<BTreeSet<String>, CheckpointError> {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Ok(match &self.weights {
            HfWeights::Single(p) => BTreeSet::from([name(p)]),
            HfWeights::Sharded(p) => {
                let mut files: BTreeSet<String> =
                    ShardIndex::read(p)?.shards().into_iter().collect();
                files.insert(name(p));
                files
            }
        })
    }

    /// What a copy of the folder carries: every regular file that is not one of its weight
    /// files (a link to a regular file inside the folder counts as that file, and so does a
    /// link of a Hugging Face cache snapshot, `models--*/snapshots/<revision>/`, to the
    /// repository's `blobs/`; any other link is left out), and what it leaves out, with why.
    ///
    /// Errors: a weight file that is a link out of the folder (its weights, pruned, would be
    /// published as the folder's), and an unreadable listing or index.
    pub fn carried(&self) -> Result<Carried, CheckpointError> {
        let weights = self.weight_files()?;
        let scope = LinkScope::of(&self.dir);
        for name in &weights {
            if scope.leads_out(&self.dir.join(name)) {
                return Err(CheckpointError::ModelFolder {
                    path: self.dir.clone(),
                    reason: format!("its weights file '{}' is a link to a file outside the folder: copy the file into the folder, or name the file itself", shown(name)),
                });
            }
        }
        let mut out = Carried::default();
        for name in list(&self.dir)? {
            if weights.contains(&name) {
                continue;
            }
            let path = self.dir.join(&name);
            // `metadata` follows links and opens nothing: a pipe is never waited on.
            let why = match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => Some("a folder"),
                Ok(m) if !m.is_file() => Some("not a regular file"),
                Err(_) => Some("unreadable, or a broken link"),
                // A folder from a stranger (a git clone, an unpacked archive) may hold links
                // to `/proc/self/environ` or `~/.ssh/id_rsa`: carried, their bytes would be
                // published with the pruned model.
                Ok(_) if scope.leads_out(&path) => {
                    Some("a link to a file outside the folder (copy the file in if you mean to carry it)")
                }
                Ok(_) if is_other_weights(&name) => {
                    Some("weights in another format, which would be carried unpruned")
                }
                Ok(_) => None,
            };
            match why {
                Some(why) => out.left_out.push((name, why)),
                None => out.carried.push(name),
            }
        }
        Ok(out)
    }

    /// Copies the carried files (names from [`carried`](Self::carried)) into `into`, byte for
    /// byte, each opened as a regular file ([`open_input`]) and created new with the source's
    /// permission bits (a file only its owner may read stays so). Their total size is checked
    /// against the room `into` has first: a sparse file from an archive takes its full size
    /// once copied, and a copy must not fill the disk.
    pub fn copy_carried(&self, names: &[String], into: &Path) -> Result<(), CheckpointError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Sizes as the copies will have them (a folder may carry more files than a process may
        // hold open: each is opened only for its copy).
        let total = names
            .iter()
            .map(|name| std::fs::metadata(self.dir.join(name)).map_or(0, |m| m.len()))
            .fold(0u64, u64::saturating_add);
        check_room(into.join("carried"), total)?;
        for name in names {
            let from = self.dir.join(name);
            let mut source = open_input(&from)?;
            let mode = source
                .metadata()
                .map_err(|e| CheckpointError::io(&from, "cannot read", e))?
                .permissions()
                .mode()
                & 0o777;
            let to = into.join(name);
            let mut target = File::options()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&to)
                .map_err(|e| CheckpointError::io(&to, "cannot write", e))?;
            io::copy(&mut source, &mut target)
                .map_err(|e| CheckpointError::io(&from, "cannot copy", e))?;
        }
        Ok(())
    }
}

/// Where a link in a model folder may lead: into the folder, or into the blobs of the Hugging
/// Face cache repository whose snapshot the folder is.
struct LinkScope {
    dir: Option<PathBuf>,
    blobs: Option<PathBuf>,
}

impl LinkScope {
    fn of(dir: &Path) -> Self {
        let dir = std::fs::canonicalize(dir).ok();
        let blobs = dir.as_deref().and_then(cache_blobs);
        LinkScope { dir, blobs }
    }

    /// Whether `path` is a link that resolves out of the scope (a broken one is left to the
    /// reader, which says so).
    fn leads_out(&self, path: &Path) -> bool {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
            return false;
        }
        std::fs::canonicalize(path).is_ok_and(|target| {
            !(self.dir.as_deref().is_some_and(|d| target.starts_with(d))
                || self.blobs.as_deref().is_some_and(|b| target.starts_with(b)))
        })
    }
}

/// The `blobs` folder of the Hugging Face cache repository (`models--<org>--<name>/`) whose
/// snapshot `dir` (resolved) is, `<repo>/snapshots/<revision>`: its files are links there.
fn cache_blobs(dir: &Path) -> Option<PathBuf> {
    let snapshots = dir.parent()?;
    let repo = snapshots.parent()?;
    (snapshots.file_name()? == "snapshots").then(|| repo.join("blobs"))
}

/// Whether `name` is a weight file of another format (or a second safetensors checkpoint): the
/// extensions of [`OTHER_WEIGHTS`], and the indexes of sharded `.bin` checkpoints.
fn is_other_weights(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".index.json")
        || lower
            .rsplit_once('.')
            .is_some_and(|(_, ext)| OTHER_WEIGHTS.contains(&ext))
}

/// A folder's entry names (UTF-8 ones; another name is refused, since nothing names it in an
/// index or a message), sorted.
fn list(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let fail = |e| CheckpointError::io(dir, "cannot list", e);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let name = entry.map_err(fail)?.file_name();
        match name.into_string() {
            Ok(name) => names.push(name),
            Err(name) => {
                return Err(CheckpointError::ModelFolder {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "it holds an entry whose name is not UTF-8 ({}): rename it",
                        name.to_string_lossy()
                    ),
                })
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).expect("write");
    }

    #[test]
    fn a_folder_finds_its_weights_and_carries_the_rest() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let d = dir.path();
        write(d, "model.safetensors", b"x");
        write(d, "config.json", b"{}");
        write(d, "tokenizer.json", b"{}");
        write(d, "pytorch_model.bin", b"x");
        std::fs::create_dir(d.join("onnx")).expect("folder");
        let folder = HfFolder::open(d).expect("a model folder");
        assert_eq!(
            folder.weights,
            HfWeights::Single(d.join("model.safetensors"))
        );
        let carried = folder.carried().expect("listed");
        assert_eq!(carried.carried, ["config.json", "tokenizer.json"]);
        let left: Vec<&str> = carried.left_out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(left, ["onnx", "pytorch_model.bin"]);
        let into = tempfile::tempdir().expect("temporary folder");
        folder
            .copy_carried(&carried.carried, into.path())
            .expect("copied");
        assert_eq!(
            std::fs::read(into.path().join("config.json")).expect("read"),
            b"{}"
        );
    }

    #[test]
    fn a_folder_without_one_clear_checkpoint_is_refused() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let d = dir.path();
        write(d, "config.json", b"{}");
        let e = HfFolder::open(d).expect_err("no weights").to_string();
        assert!(e.contains("no model.safetensors"), "{e}");
        write(d, "a.safetensors", b"x");
        write(d, "b.safetensors", b"x");
        let e = HfFolder::open(d).expect_err("two files").to_string();
        assert!(e.contains("2 safetensors files"), "{e}");
        write(d, "model.safetensors.index.json", b"{}");
        let folder = HfFolder::open(d).expect("sharded");
        assert!(folder.is_sharded());
    }
}
