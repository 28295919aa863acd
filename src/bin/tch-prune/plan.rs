//! Pruning plans: the steps the CLI's `--plan` (or its flags) describe, applied in order.

pub use crate::pattern::glob_match;
use crate::pattern::is_glob;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use tch_prune::train::NmSparsity;
use tch_prune::{
    Amount, Identity, L1Unstructured, LnStructured, Norm, PruneError, Pruner, PruningMethod,
    RandomStructured, RandomUnstructured, Result,
};

/// A method by its CLI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodName {
    /// `l1-unstructured`
    L1Unstructured,
    /// `random-unstructured`
    RandomUnstructured,
    /// `ln-structured`
    LnStructured,
    /// `random-structured`
    RandomStructured,
    /// `identity`
    Identity,
    /// N:M semi-structured sparsity ([`NmSparsity`]), with a `pattern`.
    Nm,
}

impl MethodName {
    const ALL: [(&'static str, MethodName); 6] = [
        ("l1-unstructured", MethodName::L1Unstructured),
        ("random-unstructured", MethodName::RandomUnstructured),
        ("ln-structured", MethodName::LnStructured),
        ("random-structured", MethodName::RandomStructured),
        ("identity", MethodName::Identity),
        ("nm", MethodName::Nm),
    ];

    fn structured(self) -> bool {
        matches!(
            self,
            MethodName::LnStructured | MethodName::RandomStructured
        )
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL.iter().find(|(_, m)| m == self).map(|(n, _)| *n);
        f.write_str(name.unwrap_or("?"))
    }
}

/// Accepts the CLI names and PyTorch's function names (`l1_unstructured`).
impl FromStr for MethodName {
    type Err = PruneError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                PruneError::InvalidArgument(format!(
                    "unknown method '{s}': use one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// One step of a plan: which tensors, which method, how much.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Names or patterns (see `pattern.rs`); `None` selects the default: every parameter whose
    /// name ends in `weight` and that has at least two dimensions (in a model folder, but the
    /// embedding tables and the output head).
    #[serde(default, deserialize_with = "patterns")]
    pub params: Option<Vec<String>>,
    /// Names or patterns left out of what `params` selects.
    #[serde(default, deserialize_with = "patterns")]
    pub exclude: Option<Vec<String>>,
    /// The input is a model folder with a `config.json` (a transformer): the default selection
    /// leaves out its embedding tables and output head. Set by the CLI, not by a plan.
    #[serde(skip)]
    pub transformer: bool,
    /// The pruning method.
    #[serde(deserialize_with = "from_str_value")]
    pub method: MethodName,
    /// Required by every method but `identity`.
    #[serde(default, deserialize_with = "amount")]
    pub amount: Option<Amount>,
    /// The norm of `ln-structured`.
    #[serde(default, deserialize_with = "norm")]
    pub n: Option<Norm>,
    /// The channel dimension of the structured methods.
    #[serde(default)]
    pub dim: Option<i64>,
    /// Rank all selected tensors together (unstructured methods only).
    #[serde(default)]
    pub global: bool,
    /// The `N:M` pattern of `nm` (`"2:4"`: keep 2 of every 4).
    #[serde(default, deserialize_with = "pattern")]
    pub pattern: Option<NmSparsity>,
}

impl Step {
    /// Checks that the options fit the method, and builds the method.
    pub fn method(&self) -> Result<Box<dyn PruningMethod>> {
        let m = self.method;
        let bad = |msg: String| Err(PruneError::InvalidArgument(msg));
        if self.global && m.structured() {
            return bad(format!("--global ranks entries across tensors and works with unstructured methods only, not {m}"));
        }
        if self.n.is_some() && m != MethodName::LnStructured {
            return bad(format!(
                "--n (a norm) only applies to ln-structured, not {m}"
            ));
        }
        if self.dim.is_some() && !m.structured() && m != MethodName::Nm {
            return bad(format!(
                "--dim only applies to structured methods and nm, not {m}"
            ));
        }
        if self.pattern.is_some() && m != MethodName::Nm {
            return bad(format!("--pattern (N:M) only applies to nm, not {m}"));
        }
        if m == MethodName::Nm {
            return self.nm();
        }
        let amount = match (m, self.amount) {
            (MethodName::Identity, Some(a)) => {
                return bad(format!(
                    "identity prunes nothing and takes no amount (got {a})"
                ))
            }
            (MethodName::Identity, None) => Amount::Count(0),
            (_, Some(a)) => a,
            (_, None) => {
                return bad(format!(
                    "{m} needs an amount (e.g. --amount 0.3 or --amount 12)"
                ))
            }
        };
        let dim = || {
            self.dim.ok_or_else(|| {
                PruneError::InvalidArgument(format!(
                    "{m} needs --dim (the channel dimension, e.g. 0)"
                ))
            })
        };
        Ok(match m {
            MethodName::Identity => Box::new(Identity),
            MethodName::L1Unstructured => Box::new(L1Unstructured::new(amount)?),
            MethodName::RandomUnstructured => Box::new(RandomUnstructured::new(amount)?),
            MethodName::RandomStructured => Box::new(RandomStructured::new(amount, dim()?)?),
            MethodName::LnStructured => {
                let n = self.n.ok_or_else(|| {
                    PruneError::InvalidArgument(
                        "ln-structured needs --n (the norm: 1, 2, inf, -inf, fro, ...)".into(),
                    )
                })?;
                Box::new(LnStructured::new(amount, n, dim()?)?)
            }
            MethodName::Nm => unreachable!("built by Step::nm"),
        })
    }

    /// N:M: a fixed pattern, no amount, and no global ranking (each block is on its own).
    fn nm(&self) -> Result<Box<dyn PruningMethod>> {
        let bad = |msg: &str| Err(PruneError::InvalidArgument(msg.to_string()));
        if let Some(a) = self.amount {
            return bad(&format!(
                "nm prunes M-N of every M entries and takes no amount (got {a}): give --pattern N:M"
            ));
        }
        if self.global {
            return bad("nm keeps N of every M entries within each block and ranks nothing across tensors: drop --global");
        }
        let Some(pattern) = self.pattern else {
            return bad("nm needs --pattern N:M (e.g. --pattern 2:4: keep 2 of every 4 entries)");
        };
        Ok(Box::new(match self.dim {
            Some(dim) => pattern.along(dim),
            None => pattern,
        }))
    }

    /// The tensors this step selects, in the order PyTorch would prune them: names given
    /// explicitly in the order given (so a plan's list of names gives the model's order, e.g.
    /// for a safetensors file, which orders its tensors by dtype and name), the matches of a
    /// glob pattern in the order of `available` (the file's parameter order); a tensor selected
    /// twice is pruned once, at its first place.
    ///
    /// `available` pairs each parameter's name with its number of dimensions; `buffers` are the
    /// model's buffers (`running_mean`, `running_var`, `num_batches_tracked`, and whatever a
    /// TorchScript module registers as one). PyTorch cannot prune a buffer: a glob never selects
    /// one, and naming one is an error that says it is a buffer.
    ///
    /// Selecting nothing is an error, with or without `global`: a mistyped pattern must not
    /// give a copy of the model that looks pruned.
    pub fn select(&self, available: &[(String, usize)], buffers: &[String]) -> Result<Vec<String>> {
        let mut selected = self.included(available, buffers)?;
        let Some(exclude) = &self.exclude else {
            return Ok(selected);
        };
        for pattern in exclude {
            if !available.iter().any(|(n, _)| glob_match(pattern, n)) {
                return Err(PruneError::InvalidArgument(format!(
                    "--exclude '{}' matches no parameter of the model (the parameters are {})",
                    cut(pattern),
                    some_names(available)
                )));
            }
        }
        selected.retain(|n| !exclude.iter().any(|p| glob_match(p, n)));
        if selected.is_empty() {
            return Err(PruneError::InvalidArgument(
                "nothing to prune: --exclude leaves out every tensor the step selects".into(),
            ));
        }
        Ok(selected)
    }

    /// What `params` (or the default) selects, before `exclude`.
    fn included(&self, available: &[(String, usize)], buffers: &[String]) -> Result<Vec<String>> {
        let Some(patterns) = &self.params else {
            let selected: Vec<String> = available
                .iter()
                .filter(|(name, dims)| name.ends_with("weight") && *dims >= 2)
                .filter(|(name, _)| !(self.transformer && is_embedding_or_head(name)))
                .map(|(name, _)| name.clone())
                .collect();
            if selected.is_empty() {
                return Err(PruneError::InvalidArgument(format!(
                    "nothing to prune: no parameter of the model ends in 'weight' and has two or more dimensions (the parameters are {}); name the tensors with --params",
                    some_names(available)
                )));
            }
            return Ok(selected);
        };
        if patterns.is_empty() {
            return Err(PruneError::InvalidArgument(
                "nothing to prune: the list of parameters is empty; name the tensors with --params (e.g. '*.weight')".into(),
            ));
        }
        let mut selected: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pattern in patterns {
            let before = selected.len();
            if is_glob(pattern) {
                for (name, _) in available.iter().filter(|(n, _)| glob_match(pattern, n)) {
                    if seen.insert(name.as_str()) {
                        selected.push(name.clone());
                    }
                }
            } else if available.iter().any(|(n, _)| n == pattern) {
                if seen.insert(pattern.as_str()) {
                    selected.push(pattern.clone());
                }
            } else if buffers.contains(pattern) {
                return Err(PruneError::Buffer(pattern.clone()));
            }
            let matched =
                selected.len() > before || available.iter().any(|(n, _)| glob_match(pattern, n));
            if !matched {
                let buffer_matches = buffers.iter().filter(|b| glob_match(pattern, b)).count();
                return Err(if buffer_matches > 0 {
                    PruneError::OnlyBuffers {
                        pattern: pattern.clone(),
                        buffers: buffer_matches,
                    }
                } else {
                    no_match(pattern, available)
                });
            }
        }
        Ok(selected)
    }

    /// Applies the step to `names` (already selected, in order).
    pub fn apply(&self, pruner: &Pruner, names: &[String]) -> Result<()> {
        self.run(pruner, names, false)
    }

    /// Applies the step and makes its pruning permanent at once
    /// ([`Pruner::prune_and_remove`], [`Pruner::global_unstructured_and_remove`]).
    pub fn apply_and_remove(&self, pruner: &Pruner, names: &[String]) -> Result<()> {
        self.run(pruner, names, true)
    }

    fn run(&self, pruner: &Pruner, names: &[String], permanent: bool) -> Result<()> {
        let method = self.method()?;
        let method = method.as_ref();
        if names.is_empty() {
            return Err(PruneError::NothingToPrune);
        }
        if self.global {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let scores = Default::default();
            return if permanent {
                pruner.global_unstructured_and_remove(&names, method, &scores)
            } else {
                pruner.global_unstructured(&names, method, &scores)
            };
        }
        names.iter().try_for_each(|name| {
            if permanent {
                pruner.prune_and_remove(name, method, None)
            } else {
                pruner.prune(name, method, None)
            }
        })
    }
}

/// Whether `name` is an embedding table or a language model's output head, by the names
/// transformers gives them: a module whose name holds `embed` (`embed_tokens`,
/// `word_embeddings`, `embed_positions`), GPT-2's `wte` and `wpe`, T5's `shared`, `lm_head`.
pub fn is_embedding_or_head(name: &str) -> bool {
    let module = name.rsplit_once('.').map_or("", |(m, _)| m);
    let last = module.rsplit('.').next().unwrap_or("");
    last.contains("embed") || matches!(last, "wte" | "wpe" | "shared" | "lm_head")
}

/// The warnings a selection deserves: one-dimensional tensors (norm weights, biases), whose
/// pruning zeroes whole features, and embedding tables or output heads, whose pruning zeroes
/// parts of token vectors (of the output head too, when they are tied). `dims` gives each
/// name's number of dimensions.
pub fn warnings(selected: &[&str], dims: &std::collections::HashMap<&str, usize>) -> Vec<String> {
    let mut out = Vec::new();
    let flat: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|n| dims.get(n).is_some_and(|&d| d < 2))
        .collect();
    if let Some(first) = flat.first() {
        out.push(format!(
            "warning: the selection includes {} one-dimensional tensors (norm weights and biases, e.g. '{}'), whose pruning zeroes whole features: leave them out with --exclude (e.g. '*norm*,*.bias') or select the weights by name ('*_proj.weight')",
            flat.len(),
            cut(first)
        ));
    }
    let tables: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|n| is_embedding_or_head(n))
        .collect();
    if let Some(first) = tables.first() {
        out.push(format!(
            "warning: the selection includes {} embedding tables or output heads (e.g. '{}'), whose pruning zeroes parts of token vectors (and of the output head, where the two are tied): leave them out with --exclude '*embed*,lm_head.*'",
            tables.len(),
            cut(first)
        ));
    }
    out
}

/// Prints [`warnings`] for the steps' selections on stderr, each once.
pub fn print_warnings(selections: &[Vec<String>], available: &[(String, usize)]) {
    let dims: std::collections::HashMap<&str, usize> =
        available.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let mut seen = std::collections::HashSet::new();
    let selected: Vec<&str> = selections
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|n| seen.insert(*n))
        .collect();
    for line in warnings(&selected, &dims) {
        eprintln!("{line}");
    }
}

/// The first few names of `available`, for a message.
fn some_names(available: &[(String, usize)]) -> String {
    let some: Vec<String> = available.iter().take(8).map(|(n, _)| cut(n)).collect();
    let more = if available.len() > some.len() {
        ", ..."
    } else {
        ""
    };
    if some.is_empty() {
        return "none".into();
    }
    format!("{}{more}", some.join(", "))
}

/// A user's string shown in a one-line message: control characters escaped, cut after 200
/// characters (a pattern from a plan file can be megabytes long).
fn cut(text: &str) -> String {
    crate::text::escaped_and_cut(text, 200)
}

/// A plan file: a JSON list of steps.
pub fn parse_plan(json: &str) -> Result<Vec<Step>> {
    let steps: Vec<Step> = serde_json::from_str(json)
        .map_err(|e| PruneError::InvalidArgument(format!("invalid plan: {e}")))?;
    if steps.is_empty() {
        return Err(PruneError::InvalidArgument(
            "invalid plan: it has no steps".into(),
        ));
    }
    steps.iter().try_for_each(|s| s.method().map(drop))?;
    Ok(steps)
}

/// The error for a pattern that selects nothing, listing the first few parameters.
fn no_match(pattern: &str, available: &[(String, usize)]) -> PruneError {
    PruneError::NoMatch {
        pattern: cut(pattern),
        available: some_names(available),
    }
}

fn from_str_value<'de, D: Deserializer<'de>, T: FromStr<Err = PruneError>>(
    d: D,
) -> std::result::Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// `"*.weight"`, `"a,b"` or `["a", "b"]`.
fn patterns<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Patterns {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match Patterns::deserialize(d)? {
        Patterns::One(s) => split_patterns(&s),
        Patterns::Many(v) => v,
    }))
}

/// Splits a comma-separated list of names or patterns.
pub fn split_patterns(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// A JSON integer is a count and a JSON number with a decimal point a fraction, as in Python;
/// strings are parsed the same way.
fn amount<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Amount>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let parsed = match &v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Amount::Count(i).validate(),
            None => Amount::Fraction(n.as_f64().unwrap_or(f64::NAN)).validate(),
        },
        serde_json::Value::String(s) => s.parse(),
        other => Err(PruneError::InvalidAmount(other.to_string())),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// `"2:4"`.
fn pattern<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<NmSparsity>, D::Error> {
    from_str_value(d).map(Some)
}

fn norm<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Norm>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let parsed = match &v {
        serde_json::Value::Number(n) => Ok(Norm::P(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => s.parse(),
        other => Err(PruneError::InvalidArgument(format!("invalid norm {other}"))),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_counts_fractions_and_norms_as_python_would() {
        let plan = parse_plan(
            r#"[{"params": "*.weight", "method": "l1-unstructured", "amount": 0.3, "global": true},
                {"params": ["a", "b"], "method": "ln_structured", "amount": 2, "n": "inf", "dim": 0},
                {"method": "identity"}]"#,
        )
        .unwrap();
        assert_eq!(plan[0].amount, Some(Amount::Fraction(0.3)));
        assert_eq!(plan[1].amount, Some(Amount::Count(2)));
        assert_eq!(plan[1].n, Some(Norm::P(f64::INFINITY)));
        assert_eq!(
            plan[1].params.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        assert_eq!(plan[2].params, None);
        let nm = parse_plan(r#"[{"method": "nm", "pattern": "1:4", "dim": -1}]"#).unwrap();
        assert_eq!(nm[0].pattern, NmSparsity::new(1, 4).ok());
        assert_eq!(
            nm[0].method().map(|m| format!("{m:?}")).unwrap(),
            format!("{:?}", NmSparsity::new(1, 4).unwrap().along(-1))
        );
        let one = parse_plan(r#"[{"method": "l1-unstructured", "amount": 1.0}]"#).unwrap();
        assert_eq!(one[0].amount, Some(Amount::Fraction(1.0)));
    }

    #[test]
    fn plans_reject_what_the_cli_rejects() {
        for bad in [
            r#"[]"#,
            r#"{"method": "identity"}"#,
            r#"[{"method": "magic", "amount": 1}]"#,
            r#"[{"method": "l1-unstructured", "amount": 1.5}]"#,
            r#"[{"method": "l1-unstructured"}]"#,
            r#"[{"method": "ln-structured", "amount": 1, "n": 2, "dim": 0, "global": true}]"#,
            r#"[{"method": "l1-unstructured", "amount": 1, "n": 2}]"#,
            r#"[{"method": "ln-structured", "amount": 1, "dim": 0}]"#,
            r#"[{"method": "random-structured", "amount": 1}]"#,
            r#"[{"method": "l1-unstructured", "amount": 1, "colour": "red"}]"#,
            r#"[{"method": "nm"}]"#,
            r#"[{"method": "nm", "pattern": "4:4"}]"#,
            r#"[{"method": "nm", "pattern": "2:4", "amount": 0.5}]"#,
            r#"[{"method": "nm", "pattern": "2:4", "global": true}]"#,
            r#"[{"method": "l1-unstructured", "amount": 1, "pattern": "2:4"}]"#,
        ] {
            assert!(parse_plan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_selection_is_weights_with_two_dims_in_file_order() {
        let available = vec![
            ("conv.weight".to_string(), 4),
            ("conv.bias".to_string(), 1),
            ("bn.weight".to_string(), 1),
            ("fc.weight".to_string(), 2),
        ];
        let step: Step = serde_json::from_str(r#"{"method": "identity"}"#).unwrap();
        assert_eq!(
            step.select(&available, &[]).unwrap(),
            ["conv.weight", "fc.weight"]
        );
        let step: Step =
            serde_json::from_str(r#"{"method": "identity", "params": "nope.*"}"#).unwrap();
        assert!(matches!(
            step.select(&available, &[]),
            Err(PruneError::NoMatch { .. })
        ));
    }

    #[test]
    fn names_keep_the_order_given_and_globs_the_files() {
        let available = vec![
            ("classifier.weight".to_string(), 2),
            ("features.0.weight".to_string(), 4),
            ("features.0.bias".to_string(), 1),
            ("features.3.weight".to_string(), 4),
        ];
        let select = |params: &str| {
            let step: Step =
                serde_json::from_value(serde_json::json!({"method": "identity", "params": params}))
                    .unwrap();
            step.select(&available, &[]).unwrap()
        };
        // A safetensors file orders by name; a list of names gives the model's order.
        assert_eq!(
            select("features.3.weight,features.0.weight,classifier.weight"),
            [
                "features.3.weight",
                "features.0.weight",
                "classifier.weight"
            ]
        );
        // Globs follow the file; a name selected twice keeps its first place.
        assert_eq!(
            select("features.*.weight,classifier.weight,features.0.weight"),
            [
                "features.0.weight",
                "features.3.weight",
                "classifier.weight"
            ]
        );
        assert_eq!(
            select("features.0.bias,*.weight"),
            [
                "features.0.bias",
                "classifier.weight",
                "features.0.weight",
                "features.3.weight"
            ]
        );
    }

    #[test]
    fn buffers_are_never_selected_and_naming_one_says_so() {
        let available = vec![
            ("features.0.weight".to_string(), 4),
            ("features.1.weight".to_string(), 1),
            ("features.1.bias".to_string(), 1),
        ];
        let buffers = [
            "features.1.running_mean".to_string(),
            "features.1.running_var".to_string(),
            "features.1.num_batches_tracked".to_string(),
        ];
        let step = |params: &str| -> Step {
            serde_json::from_value(serde_json::json!({"method": "identity", "params": params}))
                .unwrap()
        };
        assert_eq!(
            step("features.*").select(&available, &buffers).unwrap(),
            ["features.0.weight", "features.1.weight", "features.1.bias"]
        );
        let err = step("features.0.weight,features.1.running_var")
            .select(&available, &buffers)
            .unwrap_err();
        assert!(matches!(&err, PruneError::Buffer(n) if n == "features.1.running_var"));
        assert!(err.to_string().contains("is a buffer"), "{err}");
        let err = step("*.running_*")
            .select(&available, &buffers)
            .unwrap_err();
        assert!(
            matches!(err, PruneError::OnlyBuffers { buffers: 2, .. }),
            "{err}"
        );
    }
}
