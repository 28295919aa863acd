//! Removing channels from `torch.export` archives (`.pt2`): the coupling analysis of the
//! TorchScript path run over the exported graph (`front` writes the graph description it
//! reads, `schema` fills the arguments an exported node omits), its groups selected as for
//! TorchScript (`select`), the weights sliced (`rewrite`), and the program rewritten for the
//! new widths (`apply`): every affected size and stride in `tensor_values`, the `groups` of
//! depthwise convolutions, the sizes of `view`s. The archive is written back with the sliced
//! storages and their `tensor_meta`; every other entry is carried over byte for byte.
//!
//! Nothing runs: the shapes are the program's own (recorded for the input it was exported
//! with), the weights are read as plain storages.

mod apply;
mod front;
mod schema;

use super::graph::Graph;
use super::groups::{self, Analysis};
use super::report::{ChannelAnalysis, GroupChange, Removed, ShrinkReport};
use super::rewrite::{kept_per_tensor, removed_indices, sliced};
use super::select::{self, ShrinkOptions};
use crate::checkpoint::Pt2Archive;
use crate::error::{PruneError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Blocks, and takes out of the analysis, every layout that does not fit its weight (a
/// program whose recorded sizes are not its weights' couples a weight's dim to more or fewer
/// channels than it has): its groups keep their channels, saying why, and nothing reads or
/// slices the weight along that dim.
fn fit_layouts(analysis: &mut Analysis, shapes: &HashMap<&str, Vec<i64>>) {
    let mut misfits = Vec::new();
    for ((name, dim), layout) in &analysis.layouts {
        let width: i64 = layout
            .iter()
            .map(|&(g, inner)| analysis.groups[g].channels * inner)
            .sum();
        let actual = shapes.get(name.as_str()).and_then(|s| s.get(*dim)).copied();
        if actual != Some(width) {
            misfits.push(((name.clone(), *dim), width, actual));
        }
    }
    for ((name, dim), width, actual) in misfits {
        let why = match actual {
            Some(a) => format!(
                "the program's recorded sizes do not fit {name}: {width} channels along its dim {dim}, which has {a}"
            ),
            None => format!("the program's recorded sizes do not fit {name}: it has no dim {dim}"),
        };
        if let Some(layout) = analysis.layouts.remove(&(name.clone(), dim)) {
            for (g, _) in layout {
                let group = &mut analysis.groups[g];
                group.slices.retain(|s| !(s.name == name && s.dim == dim));
                if !group.blocked.contains(&why) {
                    group.blocked.push(why.clone());
                }
            }
        }
    }
}

/// A `torch.export` archive (`torch.export.save`) opened for channel removal: its weights and
/// its program, read without running anything.
///
/// ```no_run
/// use tch_prune::model::ExportedModel;
/// use tch_prune::shrink::ShrinkOptions;
/// let mut model = ExportedModel::load("resnet18.pt2")?;
/// let opts = ShrinkOptions { amount: Some(0.5.into()), ..Default::default() };
/// let report = model.shrink(&opts)?;
/// println!("{} -> {} parameters", report.parameters_before, report.parameters_after);
/// model.save("resnet18-half.pt2")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ExportedModel {
    archive: Pt2Archive,
    tensors: Vec<(String, Tensor)>,
    program: serde_json::Value,
}

/// What one analysis of the program gives: the graph, the groups (with the blocks the rewrite
/// adds), and how the description maps back to the program.
struct Analysed {
    graph: Graph,
    analysis: Analysis,
    described: front::Described,
}

impl ExportedModel {
    /// Reads the archive at `path` (every check of [`Pt2Archive::read`]) and its program.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let (archive, tensors) = Pt2Archive::read(path.as_ref())?;
        let bytes = archive.program()?;
        let program: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            PruneError::Shrink(format!(
                "{}: its program (models/{}.json) is not JSON this reader takes: {e}",
                path.as_ref().display(),
                archive.model()
            ))
        })?;
        Ok(Self {
            archive,
            tensors,
            program,
        })
    }

    /// The parameters and buffers by dotted name, in the archive's order.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    /// Whether `name` is a parameter (the others are buffers).
    pub fn is_parameter(&self, name: &str) -> bool {
        self.archive.is_parameter(name)
    }

    /// The shape of the program's first input as it was exported (the shapes the analysis
    /// reads are those), if it is a tensor of fixed sizes.
    pub fn input_shape(&self) -> Option<Vec<i64>> {
        front::input_shape(&self.program)
    }

    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                PruneError::Shrink(format!(
                    "the program reads '{name}', which the archive's weights config does not hold"
                ))
            })
    }

    /// The analysis of the program, with every group the archive or the program cannot
    /// rewrite blocked, saying why.
    fn analyse(&self, program: &serde_json::Value) -> Result<Analysed> {
        let names: HashMap<&str, Vec<i64>> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.size()))
            .collect();
        let described = front::describe(program, &|n| names.get(n).cloned())?;
        let graph = Graph::parse(&described.text)?;
        let mut analysis = groups::analyse(&graph);
        fit_layouts(&mut analysis, &names);
        let mut blocks: Vec<(usize, String)> = apply::unfollowable(program, &described, &analysis)?;
        // A placeholder whose recorded sizes are not its weight's: the program lies about it.
        let (_, tensor_values, _) = front::parts(program)?;
        let mut lied: HashMap<&str, String> = HashMap::new();
        for (placeholder, name) in &described.placeholders {
            let recorded = tensor_values.get(placeholder).and_then(front::sizes);
            if recorded.as_ref() != names.get(name.as_str()) {
                let recorded = match recorded {
                    Some(r) => format!("{r:?}"),
                    None => "no integer sizes".into(),
                };
                lied.insert(
                    name.as_str(),
                    format!(
                        "the program records {name} as {recorded}, the weights config as {:?}",
                        names[name.as_str()]
                    ),
                );
            }
        }
        for (gi, group) in analysis.groups.iter().enumerate() {
            for s in &group.slices {
                if let Some(why) = lied.get(s.name.as_str()) {
                    blocks.push((gi, why.clone()));
                }
                if let Some(why) = self.archive.reshape_refusal(&s.name) {
                    blocks.push((gi, format!("{} cannot change shape: {why}", s.name)));
                }
            }
        }
        for (gi, why) in blocks {
            let blocked = &mut analysis.groups[gi].blocked;
            if !blocked.contains(&why) {
                blocked.push(why);
            }
        }
        Ok(Analysed {
            graph,
            analysis,
            described,
        })
    }

    /// The coupled channel groups of the program (its shapes are those it was exported
    /// with).
    pub fn channel_groups(&self) -> Result<ChannelAnalysis> {
        let a = self.analyse(&self.program)?;
        Ok(ChannelAnalysis {
            groups: a.analysis.groups,
            macs: a.graph.macs(),
        })
    }

    fn parameter_count(&self) -> i64 {
        self.tensors
            .iter()
            .filter(|(n, _)| self.archive.is_parameter(n))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// Removes channels as [`ScriptModel::shrink`](crate::model::ScriptModel::shrink) does
    /// (the same analysis, importance and selection): per group (or globally) the least
    /// important ones, from every coupled parameter and buffer, and from the program's record
    /// of every shape they change. Nothing of the model runs. Groups the rewrite cannot follow
    /// (a weight sharing its storage, a value that is a view of part of another, a program
    /// whose recorded sizes are not its weights') keep their channels, saying why.
    pub fn shrink(&mut self, opts: &ShrinkOptions) -> Result<ShrinkReport> {
        opts.validate()?;
        let Analysed {
            graph,
            analysis: a,
            described,
        } = self.analyse(&self.program)?;
        let scores = select::scores(
            &a,
            &|name| Ok(self.tensor(name)?.shallow_clone()),
            opts.norm,
        )?;
        let kept = select::select(&a, &graph, &scores, opts)?;
        let removed: Vec<Removed> = a
            .layouts
            .iter()
            .filter_map(|((name, dim), layout)| {
                let indices = removed_indices(layout, &kept, &a);
                (!indices.is_empty()).then(|| Removed {
                    name: name.clone(),
                    dim: *dim,
                    indices,
                    is_parameter: graph.tensors.get(name).copied().unwrap_or(false),
                })
            })
            .collect();
        let parameters_before = self.parameter_count();
        let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
        let mut new_tensors = HashMap::new();
        for (name, dims) in kept_per_tensor(&a, &kept) {
            let t = sliced(self.tensor(name)?, &dims);
            shapes.insert(name.to_string(), t.size());
            new_tensors.insert(name.to_string(), t);
        }
        let mut program = self.program.clone();
        apply::rewrite(&mut program, &described, &a, &kept, &shapes)?;
        let tensors: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let t = new_tensors
                    .get(n)
                    .map(Tensor::shallow_clone)
                    .unwrap_or_else(|| t.shallow_clone());
                (n.clone(), t)
            })
            .collect();
        let old = std::mem::replace(&mut self.tensors, tensors);
        // The rewritten program analysed again: it must record the new weights' shapes and
        // give layouts that cover every width (the analysis's own checks).
        let again = match self.analyse(&program) {
            Ok(again) => again,
            Err(e) => {
                self.tensors = old;
                return Err(e);
            }
        };
        // Every width the rewritten program records must be what the kept channels make: a
        // layout that no longer lines up (a size the rewrite missed) is a block the first
        // analysis did not have.
        let mismatched = |a: &Analysis| -> std::collections::BTreeSet<(String, String)> {
            a.groups
                .iter()
                .flat_map(|g| {
                    g.blocked
                        .iter()
                        .filter(|b| {
                            b.contains("gives a layout the analysis cannot follow")
                                || b.contains("do not fit")
                                || b.contains("the program records")
                        })
                        .map(|b| (g.producer.clone(), b.clone()))
                })
                .collect()
        };
        let before = mismatched(&a);
        if let Some((producer, why)) = mismatched(&again.analysis)
            .into_iter()
            .find(|m| !before.contains(m))
        {
            self.tensors = old;
            return Err(PruneError::Shrink(format!(
                "the rewritten program's sizes do not line up ({producer}: {why}); nothing was changed (a bug of the .pt2 shrink: please report it)"
            )));
        }
        let (_, tensor_values, _) = front::parts(&program)?;
        for (placeholder, name) in &again.described.placeholders {
            if !shapes.contains_key(name) {
                continue;
            }
            let recorded = tensor_values.get(placeholder).and_then(front::sizes);
            let actual = self.tensor(name)?.size();
            if recorded.as_ref() != Some(&actual) {
                self.tensors = old;
                return Err(PruneError::Shrink(format!(
                    "the rewritten program records {name} as {recorded:?}, its weight is {actual:?} (a bug of the .pt2 shrink: please report it)"
                )));
            }
        }
        self.program = program;
        let groups = GroupChange::of_all(&a, &kept);
        Ok(ShrinkReport {
            groups,
            parameters_before,
            parameters_after: self.parameter_count(),
            macs_before: graph.macs(),
            macs_after: again.graph.macs(),
            removed,
            notes: Vec::new(),
            buffers: Vec::new(),
        })
    }

    /// Runs the program on `inputs` (its user inputs, in order) with this model's weights, the
    /// shrunk ones after [`shrink`](Self::shrink): its outputs, as
    /// `torch.export.load(path).module()(*inputs)` computes them. The nodes are called one by
    /// one through libtorch's dispatcher, on the CPU; only operators of libtorch's `aten`
    /// namespace that the code policy allows are run, and a program holding anything else (or
    /// reading lifted constants, which are not read) is refused before anything runs.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        crate::model::run_program(&self.program, &self.tensors, inputs)
    }

    /// Zeroes every removed slice of a parameter in this (unshrunk) model's tensors: the
    /// weights of the model whose outputs the shrunk one reproduces.
    pub fn zero_channels(&mut self, removed: &[Removed]) -> Result<()> {
        for r in removed.iter().filter(|r| r.is_parameter) {
            let mut t = self.tensor(&r.name)?.shallow_clone();
            let index = Tensor::from_slice(&r.indices).to_kind(Kind::Int64);
            let _ = tch::no_grad(|| t.f_index_fill_(r.dim as i64, &index, 0.0))?;
        }
        Ok(())
    }

    /// Writes the archive to `path` (atomic; not the input): the program as it is now, the
    /// weights' storages (sliced ones rewritten with their `tensor_meta`), every other entry
    /// of the input byte for byte.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let program = serde_json::to_vec(&self.program)
            .map_err(|e| PruneError::Shrink(format!("cannot write the program: {e}")))?;
        self.archive
            .write_reshaped(path, &self.tensors, &program)
            .map_err(Into::into)
    }
}
