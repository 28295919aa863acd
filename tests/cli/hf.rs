//! Hugging Face model folders in and out (issue 25): folders made at test time by
//! tests/py/hf_folders.py (random init, tiny configs: Llama tied and untied, Qwen2, Mistral,
//! GPT-2, BERT; fp32 and bf16; one model.safetensors and sharded), pruned by the CLI, and
//! checked in Python: `from_pretrained(out)` loads with no warning, every other file is carried
//! byte for byte, and the weights equal `torch.nn.utils.prune` (bf16 ties aside). A sharded
//! folder does what a single file does: plans with two steps on one tensor, `--state-out`,
//! `--in-memory`, each equal to the single file's run on the same weights.

use crate::common;
use common::Cli;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("../py/hf_folders.py");
const FAMILIES: [&str; 6] = ["llama", "llama-tied", "qwen2", "mistral", "gpt2", "bert"];

/// The generated folders, or None (said on stderr) without a Python that has torch.
pub(crate) fn folders() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        crate::architectures::generated("hf-folders", &[SCRIPT], |out| {
            common::run_python(SCRIPT, &[Path::new("make"), out]).map(drop)
        })
    })
    .as_deref()
}

/// Runs the checks (see tests/py/hf_folders.py) written to `dir`.
fn check(dir: &Path, checks: &[Value]) {
    let file = dir.join("checks.json");
    std::fs::write(&file, serde_json::to_string(checks).unwrap()).unwrap();
    let said = common::run_python(SCRIPT, &[Path::new("check"), &file]).expect("python");
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok ")).count(),
        checks.len(),
        "{said}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Every family, dtype and layout: the default selection (which leaves a model folder's
/// embeddings and output head alone) pruned by L1 streams, loads with no warning, carries the
/// other files, and equals PyTorch.
#[test]
fn folders_are_pruned_whole_and_load_with_no_warning() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let mut checks = Vec::new();
    for family in FAMILIES {
        for dtype in ["fp32", "bf16"] {
            for layout in ["single", "sharded"] {
                let name = format!("{family}-{dtype}-{layout}");
                let input = models.join(&name);
                let out = work.path().join(&name);
                let said = Cli::prune(&input, &out)
                    .flags("--method l1-unstructured --amount 0.3")
                    .ok();
                assert!(
                    said.contains("streamed")
                        && said
                            .contains(" other files (README.md, chat_template.jinja, config.json,"),
                    "{said}"
                );
                checks.push(
                    json!({"kind": "l1", "orig": path(&input), "out": path(&out), "amount": 0.3}),
                );
            }
        }
    }
    check(work.path(), &checks);
}

/// A sharded folder takes a plan with two steps on one tensor (L1 then 2:4), --state-out and
/// --in-memory, and gives what the same folder as one file gives. Before issue 25 each of
/// these was refused ("a sharded checkpoint is only pruned by streaming").
#[test]
fn sharded_folders_take_plans_state_and_in_memory() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let w = work.path();
    let plan = w.join("plan.json");
    std::fs::write(
        &plan,
        r#"[{"method": "l1-unstructured", "amount": 0.3}, {"method": "nm", "pattern": "2:4"}]"#,
    )
    .unwrap();
    let mut checks = Vec::new();
    for family in ["llama-tied", "qwen2", "gpt2"] {
        for dtype in ["fp32", "bf16"] {
            let single = models.join(format!("{family}-{dtype}-single"));
            let sharded = models.join(format!("{family}-{dtype}-sharded"));
            let run = |input: &Path, out: &str, state: Option<&str>| -> PathBuf {
                let out = w.join(format!("{family}-{dtype}-{out}"));
                let cli = Cli::prune(input, &out).arg("--plan").arg(&plan);
                let cli = match state {
                    Some(s) => cli
                        .arg("--state-out")
                        .arg(w.join(format!("{family}-{dtype}-{s}"))),
                    None => cli,
                };
                let said = cli.ok();
                assert!(said.contains("in memory"), "{said}");
                out
            };
            let one = run(&single, "plan-single", None);
            let shards = run(&sharded, "plan-sharded", Some("state.safetensors"));
            let state = w.join(format!("{family}-{dtype}-state.safetensors"));
            checks.push(json!({"kind": "same", "out": path(&shards), "ref": path(&one)}));
            checks.push(json!({"kind": "nm", "out": path(&shards)}));
            checks.push(json!({"kind": "state", "out": path(&shards), "state": path(&state)}));
            checks.push(json!({"kind": "loads", "out": path(&shards), "orig": path(&sharded)}));
            // --in-memory: the answer the streamed run gives.
            let streamed = w.join(format!("{family}-{dtype}-streamed"));
            let in_memory = w.join(format!("{family}-{dtype}-in-memory"));
            let flags = "--method l1-unstructured --amount 0.5 --global";
            assert!(Cli::prune(&sharded, &streamed)
                .flags(flags)
                .ok()
                .contains("streamed"));
            let said = Cli::prune(&sharded, &in_memory)
                .flags(flags)
                .arg("--in-memory")
                .ok();
            assert!(said.contains("in memory: --in-memory"), "{said}");
            checks.push(json!({"kind": "same", "out": path(&in_memory), "ref": path(&streamed)}));
        }
    }
    check(w, &checks);
}

/// `-o out/model.safetensors.index.json` names the folder `out`, not a folder of that name; a
/// single-file folder is a model (it was refused: "not a regular file").
#[test]
fn naming_the_index_means_its_folder() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let out = work.path().join("out");
    Cli::prune(
        &models.join("qwen2-fp32-sharded"),
        &out.join("model.safetensors.index.json"),
    )
    .flags("--method l1-unstructured --amount 0.2")
    .ok();
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(out.join("config.json").is_file());
    let one = work.path().join("one");
    Cli::prune(&models.join("qwen2-fp32-single"), &one)
        .flags("--method l1-unstructured --amount 0.2")
        .ok();
    assert_eq!(
        common::folder_entries(&one),
        [
            "README.md",
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    // An output folder that holds anything is refused before anything is read or written.
    let again = Cli::prune(&models.join("qwen2-fp32-single"), &one)
        .flags("--method l1-unstructured --amount 0.2")
        .run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist"));
}

/// Selection for transformers: the default leaves the embeddings and the output head alone
/// (and says so in a dry run), --exclude (also in a plan) leaves out what it names, ranges
/// and classes say which layers, a selection of 1-D tensors or of embeddings is warned about,
/// and --dry-run prints the selection and writes nothing.
#[test]
fn selection_knows_a_transformer() {
    let Some(models) = folders() else { return };
    let llama = models.join("llama-tied-fp32-single");
    let dry = |flags: &str| -> (String, String) {
        let out = Cli::new("prune")
            .arg(&llama)
            .arg("--dry-run")
            .flags(flags)
            .run();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (said, warned) = dry("--method l1-unstructured --amount 0.3");
    assert!(
        said.contains("step 1 (l1-unstructured): 14 tensors"),
        "{said}"
    );
    assert!(
        said.contains("model.layers.0.mlp.up_proj.weight  [128, 96]  Float"),
        "{said}"
    );
    assert!(said.contains("left out by default") && said.contains("model.embed_tokens.weight"));
    assert!(
        said.contains("nothing was pruned or written") && warned.is_empty(),
        "{warned}"
    );
    let (said, _) =
        dry("--method l1-unstructured --amount 0.3 --params model.layers.{1..9}.*_proj.weight");
    assert!(
        said.contains(": 7 tensors") && !said.contains("layers.0."),
        "{said}"
    );
    let (said, _) = dry("--method l1-unstructured --amount 0.3 --params model.layers.[0-1].self_attn.[qk]_proj.weight");
    assert!(said.contains(": 4 tensors"), "{said}");
    let (said, _) = dry("--method l1-unstructured --amount 0.3 --exclude *.mlp.*,model.layers.0.*");
    assert!(
        said.contains(": 4 tensors") && !said.contains("mlp"),
        "{said}"
    );
    // 1-D tensors and embeddings: selected when asked, with a warning each.
    let (_, warned) = dry("--method l1-unstructured --amount 0.3 --params model.layers.*.weight");
    assert!(warned.contains("4 one-dimensional tensors"), "{warned}");
    let (_, warned) = dry("--method l1-unstructured --amount 0.3 --params *.weight");
    assert!(
        warned.contains("embedding tables or output heads (e.g. 'model.embed_tokens.weight')"),
        "{warned}"
    );
    // A plan's own exclude, and the CLI's added to every step.
    let work = common::tempdir();
    let plan = work.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"[{"params": "*.weight", "exclude": "*embed*,*norm*", "method": "l1-unstructured", "amount": 0.3}]"#,
    )
    .unwrap();
    let (said, warned) = dry(&format!(
        "--plan {} --exclude *.self_attn.*",
        plan.display()
    ));
    assert!(
        said.contains(": 6 tensors") && warned.is_empty(),
        "{said}{warned}"
    );
    // An exclusion that matches nothing is a typo, not a no-op.
    let out = Cli::new("prune")
        .arg(&llama)
        .flags("--dry-run --method identity --exclude *emebd*")
        .run();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--exclude '*emebd*' matches no parameter")
    );
    // Nothing written by a dry run.
    assert!(common::folder_entries(work.path()) == ["plan.json"]);
}

/// `prune --help` says what the defaults are.
#[test]
fn help_states_the_defaults() {
    let help = common::ok(&["prune", "--help"]);
    for words in [
        "Default: every parameter whose name ends in 'weight'",
        "embedding tables and the output head",
        "--exclude",
        "--dry-run",
        "'{0..11}'",
    ] {
        assert!(help.contains(words), "{words}: {help}");
    }
}

/// `tch-prune shrink DIR` (issue 25): Llama (tied and untied), Qwen2 (grouped-query attention,
/// q/k/v biases) and Mistral folders, fp32 and bf16, one file and sharded, lose 25 % of their
/// MLP neurons and of their head groups in every layer; `from_pretrained` loads the output,
/// whose logits equal the original's with the removed neurons and heads zeroed and whose
/// parameter count equals Torch-Pruning's at the same widths (tests/py/hf_folders.py).
#[test]
fn decoder_folders_shrink_in_width() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let mut checks = Vec::new();
    for name in [
        "llama-fp32-single",
        "llama-tied-bf16-sharded",
        "qwen2-fp32-single",
        "qwen2-bf16-sharded",
        "mistral-fp32-sharded",
    ] {
        let input = models.join(name);
        let out = work.path().join(name);
        let said = Cli::new("shrink")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .flags("--amount 0.25")
            .ok();
        assert!(
            said.contains("intermediate_size 128 -> 96, attention heads 8 -> 6, key/value heads 4 -> 3 (head_dim 12)"),
            "{said}"
        );
        checks.push(json!({"kind": "shrink", "orig": path(&input), "out": path(&out), "mlp_removed": 32, "kv_removed": 1}));
    }
    // The two amounts apart.
    let input = models.join("mistral-fp32-single");
    let out = work.path().join("apart");
    let said = Cli::new("shrink")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .flags("--mlp-amount 0.5 --head-amount 0.25")
        .ok();
    assert!(
        said.contains("intermediate_size 128 -> 64, attention heads 8 -> 6"),
        "{said}"
    );
    checks.push(json!({"kind": "shrink", "orig": path(&input), "out": path(&out), "mlp_removed": 64, "kv_removed": 1}));
    check(work.path(), &checks);
}

/// Neurons already pruned to zero (ln-structured rows of up_proj) go first: the shrunk model's
/// logits are the pruned model's, unchanged.
#[test]
fn zeroed_neurons_go_first_and_change_nothing() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let pruned = work.path().join("pruned");
    Cli::prune(&models.join("qwen2-fp32-single"), &pruned)
        .flags("--method ln-structured --amount 0.25 --n 2 --dim 0 --params *.mlp.up_proj.weight")
        .ok();
    let out = work.path().join("shrunk");
    let said = Cli::new("shrink")
        .arg(&pruned)
        .arg("-o")
        .arg(&out)
        .flags("--mlp-amount 0.25 --head-amount 0")
        .ok();
    assert!(
        said.contains("removed 64 neurons and 0 head groups that were entirely zero"),
        "{said}"
    );
    check(
        work.path(),
        &[json!({"kind": "unchanged", "orig": path(&pruned), "out": path(&out)})],
    );
}

/// A family shrink does not know is refused on one line that names it, writing nothing; so
/// are TorchScript-only flags on a folder.
#[test]
fn unknown_families_are_refused() {
    let Some(models) = folders() else { return };
    let work = common::tempdir();
    let out = work.path().join("out");
    for (input, flags, words) in [
        ("gpt2-fp32-single", "--amount 0.25", "model_type 'gpt2'"),
        ("bert-fp32-single", "--amount 0.25", "model_type 'bert'"),
        ("llama-fp32-single", "--exact", "are for TorchScript files"),
    ] {
        let run = Cli::new("shrink")
            .arg(models.join(input))
            .arg("-o")
            .arg(&out)
            .flags(flags)
            .run();
        assert!(!run.status.success());
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(words) && err.lines().count() == 1, "{err}");
        assert!(!out.exists());
    }
}
