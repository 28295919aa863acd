//! Width pruning of a Hugging Face decoder folder on the checkpoint alone: fewer MLP neurons
//! (`intermediate_size`) and fewer attention heads, the same in every layer, so that the
//! rewritten `config.json` describes the result and `transformers`, vLLM and llama.cpp's
//! converters load it. What Torch-Pruning's `examples/LLMs/prune_llm.py` does on the live
//! module, for the families whose layout is known (`model_type` llama, mistral, qwen2).
//!
//! A neuron is row `j` of `gate_proj` and `up_proj` with column `j` of `down_proj`; a head group
//! is one key/value head with the query heads that read it (grouped-query attention): its rows
//! of `k_proj` and `v_proj`, its query heads' rows of `q_proj`, their biases (Qwen2), and their
//! columns of `o_proj`. Groups are ranked within each layer by their L2 norm over all those
//! slices (Torch-Pruning's default importance), or by a file of scores, groups that already add
//! nothing first (a neuron whose gate row, up row or down column is zero; a head group whose
//! o_proj columns or values are zero); the lowest go. Norms, rotary embeddings, embeddings and the output head are not
//! touched. The shrunk model computes what the original computes with the removed groups
//! zeroed.

use crate::checkpoint::{
    atomic_write_dir, read_input, write_safetensors, CheckpointError, HfFolder, HfWeights,
    MappedSafetensors, ShardIndex, MAX_SMALL_FILE,
};
use crate::error::{PruneError, Result};
use crate::Amount;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// What [`shrink_transformer`] removes.
#[derive(Clone, Debug)]
pub struct TransformerShrinkOptions {
    /// MLP neurons to remove per layer (a fraction of `intermediate_size`, or a count).
    pub mlp: Amount,
    /// Attention heads to remove per layer (a fraction of the key/value head groups, or a
    /// count of them); each key/value head goes with its query heads.
    pub heads: Amount,
    /// A safetensors file of importance scores instead of the norms (higher is kept first):
    /// `model.layers.<i>.mlp` of `intermediate_size` entries, `model.layers.<i>.self_attn` of
    /// `num_key_value_heads` entries (or of `num_attention_heads`, summed per group). A layer
    /// it does not score is ranked by norm.
    pub scores: Option<PathBuf>,
}

/// What [`shrink_transformer`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransformerShrinkReport {
    /// `model_type` of the config.
    pub model_type: String,
    /// Layers shrunk.
    pub layers: usize,
    /// `intermediate_size` before and after.
    pub intermediate_size: (i64, i64),
    /// `num_attention_heads` before and after.
    pub attention_heads: (i64, i64),
    /// `num_key_value_heads` before and after.
    pub key_value_heads: (i64, i64),
    /// `head_dim` (unchanged, written explicitly).
    pub head_dim: i64,
    /// Elements of every tensor, before and after.
    pub parameters: (i64, i64),
    /// Groups removed that added nothing already (a zero gate row, up row or down column; zero
    /// o_proj columns or values), neurons and head groups, over all layers.
    pub zero_groups_removed: (usize, usize),
    /// Where the head count was rounded to one the family's config accepts, what was asked.
    pub rounded: Option<String>,
    /// The kept neuron and key/value head indices of every layer.
    pub kept: Vec<KeptIndices>,
}

/// The indices one layer keeps (in their original order).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeptIndices {
    /// MLP neurons.
    pub mlp: Vec<i64>,
    /// Key/value heads (each with its query heads).
    pub kv_heads: Vec<i64>,
}

/// The widths of a decoder, from its `config.json`.
#[derive(Clone, Debug)]
struct Widths {
    model_type: String,
    hidden: i64,
    intermediate: i64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    layers: usize,
}

impl Widths {
    fn read(config: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| -> PruneError {
            CheckpointError::ModelFolder {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        };
        let model_type = config["model_type"].as_str().unwrap_or("").to_string();
        if !matches!(model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(bad(format!(
                "shrink knows the decoder families llama, mistral and qwen2, and config.json says model_type '{}'",
                crate::checkpoint::first_line(&model_type)
            )));
        }
        let int = |key: &str| -> Result<i64> {
            config[key]
                .as_i64()
                .filter(|v| *v > 0)
                .ok_or_else(|| bad(format!("config.json has no positive integer '{key}'")))
        };
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let kv_heads = match config.get("num_key_value_heads") {
            Some(Value::Null) | None => heads,
            Some(_) => int("num_key_value_heads")?,
        };
        let head_dim = match config.get("head_dim") {
            Some(Value::Null) | None => hidden / heads,
            Some(_) => int("head_dim")?,
        };
        if head_dim == 0 {
            return Err(bad(format!(
                "hidden_size {hidden} is smaller than num_attention_heads {heads}, which leaves heads of no width: give head_dim"
            )));
        }
        if heads.checked_mul(head_dim).is_none() {
            return Err(bad(format!(
                "num_attention_heads {heads} times head_dim {head_dim} is past any tensor's size"
            )));
        }
        if heads % kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        Ok(Widths {
            model_type,
            hidden,
            intermediate: int("intermediate_size")?,
            heads,
            kv_heads,
            head_dim,
            layers: int("num_hidden_layers")? as usize,
        })
    }

    fn group(&self) -> i64 {
        self.heads / self.kv_heads
    }

    /// Key/value heads to keep: `wanted`, or the nearest count the family's config accepts
    /// (transformers' `LlamaConfig` refuses a head count that does not divide `hidden_size`,
    /// even with `head_dim` given; Mistral's and Qwen2's do not), with a note when rounded.
    fn kv_heads_kept(&self, wanted: i64) -> (i64, Option<String>) {
        let accepts =
            |kv: i64| self.model_type != "llama" || self.hidden % (kv * self.group()) == 0;
        if accepts(wanted) {
            return (wanted, None);
        }
        // The nearest accepted count, more heads kept on a tie; all of them always fits.
        let best = (1..=self.kv_heads)
            .filter(|&kv| accepts(kv))
            .min_by_key(|&kv| ((kv - wanted).abs(), -kv))
            .unwrap_or(self.kv_heads);
        let note = format!(
            "{} attention heads kept, not {}: transformers' {} config needs a head count that divides hidden_size {}",
            best * self.group(),
            wanted * self.group(),
            self.model_type,
            self.hidden
        );
        (best, Some(note))
    }
}

/// The weights of a folder, mapped: every tensor's file and header.
struct Weights {
    files: Vec<MappedSafetensors>,
    at: HashMap<String, (usize, usize)>,
}

impl Weights {
    fn open(folder: &HfFolder) -> Result<(Self, Option<ShardIndex>)> {
        let (paths, index) = match &folder.weights {
            HfWeights::Single(p) => (vec![p.clone()], None),
            HfWeights::Sharded(p) => {
                let index = ShardIndex::read(p)?;
                let dir = index.folder();
                let paths = index.shards().iter().map(|s| dir.join(s)).collect();
                (paths, Some(index))
            }
        };
        let mut files = Vec::new();
        let mut at = HashMap::new();
        for (f, path) in paths.iter().enumerate() {
            let file = MappedSafetensors::open(path)?;
            for (i, t) in file.tensors().iter().enumerate() {
                at.insert(t.name.clone(), (f, i));
            }
            files.push(file);
        }
        Ok((Weights { files, at }, index))
    }

    fn tensor(&self, name: &str) -> Option<Tensor> {
        let &(f, i) = self.at.get(name)?;
        let t = &self.files[f].tensors()[i];
        Some(Tensor::from_data_size(
            self.files[f].bytes(t),
            &t.shape,
            t.kind,
        ))
    }

    /// `name`, which must exist with this shape.
    fn expect(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.tensor(name).ok_or_else(|| {
            PruneError::InvalidArgument(format!(
                "the checkpoint has no '{name}', which its config's family has"
            ))
        })?;
        if t.size() != shape {
            return Err(PruneError::InvalidArgument(format!(
                "'{name}' has shape {:?}, and config.json says {shape:?}",
                t.size()
            )));
        }
        Ok(t)
    }
}

/// Squared L2 norms of the slices along `dim` (rows for 0, columns for 1), as f64.
fn squares(t: &Tensor, dim: i64) -> Vec<f64> {
    let other = 1 - dim;
    let s =
        t.to_kind(Kind::Double)
            .square()
            .sum_dim_intlist([other].as_slice(), false, Kind::Double);
    Vec::<f64>::try_from(&s).unwrap_or_default()
}

/// For a 1-D tensor (a bias) split into `n` slices, each slice's squared norm.
fn bias_squares(t: &Tensor, n: i64) -> Vec<f64> {
    squares(&t.reshape([n, -1]), 0)
}

/// Adds `b` into `a` entry by entry, `b` summed over runs of `run` entries first.
fn add_runs(a: &mut [f64], b: &[f64], run: usize) {
    for (i, v) in b.iter().enumerate() {
        a[i / run] += v;
    }
}

/// The indices to keep of `n` groups scored `score` (with `zero` marking groups entirely
/// zero): the `remove` lowest go, zero groups first, ties to the lower index.
fn keep(score: &[f64], zero: &[bool], remove: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    // A total order, NaN scores (weights holding NaN) last, as torch.topk ranks NaN largest:
    // a NaN equal to every score is no order at all, and the standard sort panics on one.
    order.sort_by(|&a, &b| {
        (!zero[a])
            .cmp(&!zero[b])
            .then(score[a].is_nan().cmp(&score[b].is_nan()))
            .then(score[a].total_cmp(&score[b]))
            .then(a.cmp(&b))
    });
    let mut kept: Vec<i64> = order[remove..].iter().map(|&i| i as i64).collect();
    kept.sort_unstable();
    kept
}

/// Shrinks the model folder `input` into the new folder `output` (see the module's text):
/// weights written shard by shard (each shard's tensors in memory at once), `config.json`
/// rewritten with the new `intermediate_size`, `num_attention_heads`, `num_key_value_heads`
/// and an explicit `head_dim`, every other file carried as it is; the folder appears whole or
/// not at all.
pub fn shrink_transformer(
    input: &Path,
    output: &Path,
    options: &TransformerShrinkOptions,
) -> Result<TransformerShrinkReport> {
    let folder = HfFolder::open(input)?;
    // Before anything is read: a weights file linked from outside the folder is refused.
    let carried = folder.carried()?;
    // config.json is read and written back rewritten: one the folder leaves out (a link out
    // of it, a pipe) is not the folder's.
    if let Some((_, why)) = carried.left_out.iter().find(|(n, _)| n == "config.json") {
        return Err(CheckpointError::ModelFolder {
            path: input.join("config.json"),
            reason: format!("config.json is {why}"),
        }
        .into());
    }
    let carried: Vec<String> = carried
        .carried
        .into_iter()
        .filter(|n| n != "config.json")
        .collect();
    let config_path = input.join("config.json");
    let text = read_input(&config_path, MAX_SMALL_FILE, "a config")?;
    let mut config: Value =
        serde_json::from_slice(&text).map_err(|e| CheckpointError::ModelFolder {
            path: config_path.clone(),
            reason: format!("config.json is not JSON: {e}"),
        })?;
    let w = Widths::read(&config, &config_path)?;
    let (weights, index) = Weights::open(&folder)?;
    // The widths are the config's word until the tensors confirm them: checked against the
    // first layer's before any count is used, so that an absurd one (2^62 heads) is refused
    // rather than looped over. Past that check each width is bounded by a tensor in the file.
    let p = "model.layers.0";
    let _ = weights.expect(
        &format!("{p}.self_attn.q_proj.weight"),
        &[w.heads * w.head_dim, w.hidden],
    )?;
    let _ = weights.expect(
        &format!("{p}.self_attn.k_proj.weight"),
        &[w.kv_heads * w.head_dim, w.hidden],
    )?;
    let _ = weights.expect(
        &format!("{p}.mlp.gate_proj.weight"),
        &[w.intermediate, w.hidden],
    )?;
    let scores = match &options.scores {
        Some(path) => crate::checkpoint::read_safetensors(path)?
            .into_iter()
            .collect::<HashMap<String, Tensor>>(),
        None => HashMap::new(),
    };

    let mlp_remove = options.mlp.to_count(w.intermediate)?;
    if mlp_remove >= w.intermediate {
        return Err(PruneError::InvalidArgument(format!(
            "removing {mlp_remove} of {} MLP neurons leaves none: give a smaller amount",
            w.intermediate
        )));
    }
    let kv_remove = options.heads.to_count(w.kv_heads)?;
    if kv_remove >= w.kv_heads {
        return Err(PruneError::InvalidArgument(format!(
            "removing {kv_remove} of {} key/value heads leaves none: give a smaller amount",
            w.kv_heads
        )));
    }
    let (kv_keep, rounded) = w.kv_heads_kept(w.kv_heads - kv_remove);
    let (g, d, h) = (w.group(), w.head_dim, w.hidden);
    let (nq, nkv) = (w.heads * d, w.kv_heads * d);

    // Per layer: the kept indices, and each sliced tensor's new value.
    let mut sliced: HashMap<String, Tensor> = HashMap::new();
    let mut kept_all = Vec::new();
    let mut zeros = (0, 0);
    for layer in 0..w.layers {
        let p = format!("model.layers.{layer}");
        let gate = weights.expect(&format!("{p}.mlp.gate_proj.weight"), &[w.intermediate, h])?;
        let up = weights.expect(&format!("{p}.mlp.up_proj.weight"), &[w.intermediate, h])?;
        let down = weights.expect(&format!("{p}.mlp.down_proj.weight"), &[h, w.intermediate])?;
        let (gate_sq, up_sq, down_sq) = (squares(&gate, 0), squares(&up, 0), squares(&down, 1));
        let mut mlp = gate_sq.clone();
        add_runs(&mut mlp, &up_sq, 1);
        add_runs(&mut mlp, &down_sq, 1);
        // A neuron adds nothing once its gate row (silu(0) = 0), its up row or its down column
        // is zero: ln-structured pruning of any one of them leaves such neurons.
        let mlp_zero: Vec<bool> = (0..mlp.len())
            .map(|j| gate_sq[j] == 0.0 || up_sq[j] == 0.0 || down_sq[j] == 0.0)
            .collect();
        let mlp_score =
            scored(&scores, &format!("{p}.mlp"), w.intermediate, 1, true)?.unwrap_or(mlp);
        let mlp_kept = keep(&mlp_score, &mlp_zero, mlp_remove as usize);

        let q = weights.expect(&format!("{p}.self_attn.q_proj.weight"), &[nq, h])?;
        let k = weights.expect(&format!("{p}.self_attn.k_proj.weight"), &[nkv, h])?;
        let v = weights.expect(&format!("{p}.self_attn.v_proj.weight"), &[nkv, h])?;
        let o = weights.expect(&format!("{p}.self_attn.o_proj.weight"), &[h, nq])?;
        let per_group = |t: &Tensor, dim: i64, run: i64| {
            let mut out = vec![0.0; w.kv_heads as usize];
            add_runs(&mut out, &squares(t, dim), run as usize);
            out
        };
        let (v_sq, o_sq) = (per_group(&v, 0, d), per_group(&o, 1, g * d));
        let mut heads = per_group(&q, 0, g * d);
        add_runs(&mut heads, &per_group(&k, 0, d), 1);
        add_runs(&mut heads, &v_sq, 1);
        add_runs(&mut heads, &o_sq, 1);
        let mut biases = Vec::new();
        let mut v_bias_sq = vec![0.0; w.kv_heads as usize];
        for (name, n) in [("q_proj", nq), ("k_proj", nkv), ("v_proj", nkv)] {
            let bname = format!("{p}.self_attn.{name}.bias");
            if weights.at.contains_key(&bname) {
                let b = weights.expect(&bname, &[n])?;
                let sq = bias_squares(&b, w.kv_heads);
                add_runs(&mut heads, &sq, 1);
                if name == "v_proj" {
                    v_bias_sq = sq;
                }
                biases.push((bname, b, n / nkv));
            }
        }
        // A head group adds nothing once its o_proj columns are zero, or its values are
        // (v_proj rows and bias): attention then mixes zeros.
        let head_zero: Vec<bool> = (0..heads.len())
            .map(|h| o_sq[h] == 0.0 || (v_sq[h] == 0.0 && v_bias_sq[h] == 0.0))
            .collect();
        let attn = format!("{p}.self_attn");
        let head_score = match scored(&scores, &attn, w.kv_heads, 1, false)? {
            Some(s) => s,
            None => scored(&scores, &attn, w.heads, g as usize, true)?.unwrap_or(heads),
        };
        let kv_kept = keep(&head_score, &head_zero, (w.kv_heads - kv_keep) as usize);
        // `keep` returns its indices sorted: a binary search each, not a scan (a layer of
        // 200,000 zero neurons would take seconds scanning, a few million hours).
        zeros.0 += (0..w.intermediate as usize)
            .filter(|i| mlp_zero[*i] && mlp_kept.binary_search(&(*i as i64)).is_err())
            .count();
        zeros.1 += (0..w.kv_heads as usize)
            .filter(|i| head_zero[*i] && kv_kept.binary_search(&(*i as i64)).is_err())
            .count();

        // Row indices: of the kv heads' rows, and of their query heads' rows.
        let kv_rows: Vec<i64> = kv_kept
            .iter()
            .flat_map(|&kv| (kv * d)..(kv * d + d))
            .collect();
        let q_rows: Vec<i64> = kv_kept
            .iter()
            .flat_map(|&kv| (kv * g * d)..((kv + 1) * g * d))
            .collect();
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let (mlp_i, q_i, kv_i) = (idx(&mlp_kept), idx(&q_rows), idx(&kv_rows));
        let put = |sliced: &mut HashMap<String, Tensor>, name: String, t: Tensor| {
            sliced.insert(name, t.contiguous());
        };
        put(
            &mut sliced,
            format!("{p}.mlp.gate_proj.weight"),
            gate.index_select(0, &mlp_i),
        );
        put(
            &mut sliced,
            format!("{p}.mlp.up_proj.weight"),
            up.index_select(0, &mlp_i),
        );
        put(
            &mut sliced,
            format!("{p}.mlp.down_proj.weight"),
            down.index_select(1, &mlp_i),
        );
        put(
            &mut sliced,
            format!("{p}.self_attn.q_proj.weight"),
            q.index_select(0, &q_i),
        );
        put(
            &mut sliced,
            format!("{p}.self_attn.k_proj.weight"),
            k.index_select(0, &kv_i),
        );
        put(
            &mut sliced,
            format!("{p}.self_attn.v_proj.weight"),
            v.index_select(0, &kv_i),
        );
        put(
            &mut sliced,
            format!("{p}.self_attn.o_proj.weight"),
            o.index_select(1, &q_i),
        );
        for (name, b, per_kv) in biases {
            let rows = if per_kv == 1 { &kv_i } else { &q_i };
            put(&mut sliced, name, b.index_select(0, rows));
        }
        kept_all.push(KeptIndices {
            mlp: mlp_kept,
            kv_heads: kv_kept,
        });
    }

    let before: i64 = weights
        .files
        .iter()
        .flat_map(|f| f.tensors().iter().map(|t| t.numel() as i64))
        .sum();
    let removed: i64 = sliced
        .iter()
        .map(|(name, t)| {
            let (f, i) = weights.at[name.as_str()];
            (weights.files[f].tensors()[i].numel() - t.numel()) as i64
        })
        .sum();

    let object = config
        .as_object_mut()
        .ok_or_else(|| CheckpointError::ModelFolder {
            path: config_path.clone(),
            reason: "config.json is not a JSON object".into(),
        })?;
    let new_intermediate = w.intermediate - mlp_remove;
    object.insert("intermediate_size".into(), new_intermediate.into());
    object.insert("num_attention_heads".into(), (kv_keep * g).into());
    object.insert("num_key_value_heads".into(), kv_keep.into());
    object.insert("head_dim".into(), d.into());
    // Sorted keys and two-space indents, as transformers writes it.
    let mut config_text = serde_json::to_string_pretty(&config).unwrap_or_default();
    config_text.push('\n');

    atomic_write_dir(output, |tmp| -> Result<()> {
        let mut weight_map = BTreeMap::new();
        let mut total: u64 = 0;
        for file in &weights.files {
            let name = file.path().file_name().unwrap_or_default().to_owned();
            let tensors: Vec<(String, Tensor)> = file
                .tensors()
                .iter()
                .map(|t| {
                    let value = sliced
                        .remove(&t.name)
                        .unwrap_or_else(|| Tensor::from_data_size(file.bytes(t), &t.shape, t.kind));
                    (t.name.clone(), value)
                })
                .collect();
            for (n, t) in &tensors {
                total += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
                weight_map.insert(n.clone(), name.to_string_lossy().into_owned());
            }
            write_safetensors(tmp.join(&name), &tensors)?;
        }
        if let Some(index) = &index {
            let mut metadata = index.metadata.clone();
            if let Some(m) = metadata.as_object_mut() {
                m.insert("total_size".into(), total.into());
            }
            let written = ShardIndex {
                path: tmp.join(index.path.file_name().unwrap_or_default()),
                metadata,
                weight_map,
            };
            crate::checkpoint::write_new(&written.path, written.to_json())
                .map_err(|e| CheckpointError::io(&written.path, "cannot write", e))?;
        }
        let config_out = tmp.join("config.json");
        std::fs::write(&config_out, &config_text)
            .map_err(|e| CheckpointError::io(&config_out, "cannot write", e))?;
        folder.copy_carried(&carried, tmp)?;
        // Nothing read from the maps may have changed under them.
        weights.files.iter().try_for_each(|f| f.unchanged())?;
        Ok(())
    })?;

    Ok(TransformerShrinkReport {
        model_type: w.model_type.clone(),
        layers: w.layers,
        intermediate_size: (w.intermediate, new_intermediate),
        attention_heads: (w.heads, kv_keep * g),
        key_value_heads: (w.kv_heads, kv_keep),
        head_dim: d,
        parameters: (before, before - removed),
        zero_groups_removed: zeros,
        rounded,
        kept: kept_all,
    })
}

/// The scores of `name` in the scores file, if it has them: `n` entries, each run of `run` of
/// them summed into one group's score. Another shape is `None` where the caller has another
/// shape to try (not `strict`), else an error.
fn scored(
    scores: &HashMap<String, Tensor>,
    name: &str,
    n: i64,
    run: usize,
    strict: bool,
) -> Result<Option<Vec<f64>>> {
    let Some(t) = scores.get(name) else {
        return Ok(None);
    };
    if t.size() != [n] {
        if !strict {
            return Ok(None);
        }
        return Err(PruneError::InvalidArgument(format!(
            "the scores file's '{name}' has shape {:?}: give one score per neuron, key/value head or attention head",
            t.size()
        )));
    }
    let values = Vec::<f64>::try_from(&t.to_kind(Kind::Double)).unwrap_or_default();
    let mut out = vec![0.0; n as usize / run];
    add_runs(&mut out, &values, run);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widths(model_type: &str, hidden: i64) -> Widths {
        Widths {
            model_type: model_type.into(),
            hidden,
            intermediate: 128,
            heads: 8,
            kv_heads: 4,
            head_dim: 10,
            layers: 1,
        }
    }

    /// Llama's config refuses a head count that does not divide hidden_size; Qwen2's accepts it.
    #[test]
    fn head_counts_round_to_what_the_family_accepts() {
        let (kept, note) = widths("llama", 80).kv_heads_kept(3);
        assert_eq!(kept, 4);
        assert!(note.unwrap().contains("8 attention heads kept, not 6"));
        assert_eq!(widths("llama", 96).kv_heads_kept(3), (3, None));
        assert_eq!(widths("qwen2", 80).kv_heads_kept(3), (3, None));
    }

    #[test]
    fn zero_groups_go_first_then_the_lowest() {
        let kept = keep(&[5.0, 1.0, 9.0, 3.0], &[false, false, true, false], 2);
        assert_eq!(kept, [0, 3]);
    }
}
