//! `tch-prune shrink DIR`: width pruning of a Hugging Face decoder folder
//! ([`shrink_transformer`]), with its summary: widths, parameters and file sizes before and
//! after.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch_prune::checkpoint::check_folder_destination;
use tch_prune::shrink::{shrink_transformer, TransformerShrinkOptions};
use tch_prune::Amount;

/// The arguments of `shrink` that a model folder takes.
pub struct FolderArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub amount: Option<String>,
    pub mlp_amount: Option<String>,
    pub head_amount: Option<String>,
    pub scores: Option<PathBuf>,
    pub json: bool,
}

pub fn run(args: &FolderArgs) -> Result<()> {
    check_folder_destination(&args.output)?;
    let amount = |flag: &Option<String>, name: &str| -> Result<Amount> {
        let text = flag
            .as_deref()
            .or(args.amount.as_deref())
            .with_context(|| {
                format!("{name}: give --amount (both widths) or --mlp-amount and --head-amount")
            })?;
        Ok(text.parse()?)
    };
    let options = TransformerShrinkOptions {
        mlp: amount(&args.mlp_amount, "--mlp-amount")?,
        heads: amount(&args.head_amount, "--head-amount")?,
        scores: args.scores.clone(),
    };
    let report = shrink_transformer(&args.input, &args.output, &options)?;
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let (before, after) = (size(&args.input), size(&args.output));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["weights_bytes"] = serde_json::json!([before, after]);
        value["output"] = args.output.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let r = &report;
    println!(
        "{} layers of {}: intermediate_size {} -> {}, attention heads {} -> {}, key/value heads {} -> {} (head_dim {})",
        r.layers,
        r.model_type,
        r.intermediate_size.0,
        r.intermediate_size.1,
        r.attention_heads.0,
        r.attention_heads.1,
        r.key_value_heads.0,
        r.key_value_heads.1,
        r.head_dim
    );
    if let Some(note) = &r.rounded {
        println!("rounded: {note}");
    }
    if r.zero_groups_removed != (0, 0) {
        println!(
            "removed {} neurons and {} head groups that were entirely zero already (they added nothing)",
            r.zero_groups_removed.0, r.zero_groups_removed.1
        );
    }
    println!(
        "parameters {} -> {} ({:.1}% fewer); weights {:.1} MB -> {:.1} MB; wrote {} (config.json rewritten, other files carried)",
        r.parameters.0,
        r.parameters.1,
        100.0 * (1.0 - r.parameters.1 as f64 / r.parameters.0.max(1) as f64),
        before as f64 / 1e6,
        after as f64 / 1e6,
        args.output.display()
    );
    Ok(())
}
