// The TorchScript side of channel removal (src/model/shrink/): what tch does not expose of libtorch's
// JIT API. Three jobs:
//  1. describe: the inlined graph of `forward`, with every primitive module attribute
//     (`self.training`, `self.use_res_connect`, an absent `bias`) replaced by its current value
//     and constant-propagated away (so the `if` branches a model takes are plain nodes), and the
//     shape of every top-level tensor value measured by running that graph once on an example
//     input. Written in the line format that src/model/shrink/graph.rs specifies and parses;
//     the coupling analysis itself is in Rust.
//  2. set: replace a parameter or buffer by dotted name (keeping its kind and requires_grad), and
//     an int attribute or class constant (`out_channels`, `num_features`, ...) of a submodule.
//  3. set_groups: a conv's `groups` is a class constant that TorchScript bakes into the
//     generated code (`torch.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 32)`): rewrite that
//     constant in the class's method graphs, from which `save` regenerates the code.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <limits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "tch_prune.h"

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

namespace {

// Constants may hold spaces or newlines (strings): the line format keeps them on one token, with
// each whitespace character written as `_` and an empty one written as `_`.
std::string token(const std::string& s) {
  std::string out;
  for (char c : s) out += (c == ' ' || c == '\n' || c == '\t' || c == '\r') ? '_' : c;
  return out.empty() ? std::string("_") : out;
}

std::string join_path(const std::string& parent, const std::string& name) {
  return parent.empty() ? name : parent + "." + name;
}

torch::jit::Module submodule(const torch::jit::Module& root, const std::string& path) {
  torch::jit::Module m = root;
  if (path.empty()) return m;
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '.')) {
    if (!m.hasattr(part)) throw std::runtime_error("no submodule `" + part + "` in `" + path + "`");
    auto v = m.attr(part);
    if (!v.isModule()) throw std::runtime_error("`" + path + "` is not a module path");
    m = v.toModule();
  }
  return m;
}

// Which module a value of the graph is (self, or a chain of GetAttr from self), by dotted path.
struct ModuleResolver {
  torch::jit::Module root;
  Value* self;
  std::unordered_map<Value*, std::string> paths;

  bool resolve(Value* v, std::string& path) {
    if (v == self) {
      path.clear();
      return true;
    }
    auto it = paths.find(v);
    if (it != paths.end()) {
      path = it->second;
      return true;
    }
    return false;
  }
};

void fold_attributes(Block* block, ModuleResolver& r) {
  for (auto it = block->nodes().begin(); it != block->nodes().end(); ++it) {
    Node* n = *it;
    for (Block* b : n->blocks()) fold_attributes(b, r);
    if (n->kind() != c10::prim::GetAttr) continue;
    std::string parent;
    if (!r.resolve(n->input(0), parent)) continue;
    auto m = submodule(r.root, parent);
    const std::string name = n->s(c10::attr::name);
    auto value = m.attr(name);
    std::string path = join_path(parent, name);
    if (value.isModule()) {
      r.paths[n->output()] = path;
      continue;
    }
    // Evaluation-mode analysis: `training` is read as false (dropout off, batch norm with its
    // running statistics, no buffer updates), whatever mode the module was saved in.
    if (name == "training" && value.isBool()) value = c10::IValue(false);
    if (value.isBool() || value.isInt() || value.isDouble() || value.isNone() ||
        value.isString() || value.isIntList()) {
      torch::jit::WithInsertPoint guard(n);
      Value* c = block->owningGraph()->insertConstant(value);
      n->output()->replaceAllUsesWith(c);
    }
  }
}

// Ops that read only a tensor's metadata: a branch that uses a tensor only through them (a
// module's `if input.dim() != 4: raise ...` check) does not constrain its channels, as the same
// reads outside branches do not (src/model/shrink/groups.rs, SHAPE_READERS).
bool reads_metadata(Node* n) {
  static const char* kinds[] = {"aten::dim", "aten::size", "aten::len", "aten::numel", "prim::device",
                                "prim::dtype", "aten::is_floating_point", "prim::is_cuda"};
  for (const char* k : kinds) {
    if (n->kind().toQualString() == std::string(k)) return true;
  }
  return false;
}

void collect_captured(Block* block, Block* outer, std::vector<Value*>& out) {
  for (Node* n : block->nodes()) {
    if (reads_metadata(n)) continue;
    for (Value* v : n->inputs()) {
      if (v->node()->owningBlock() == outer || v->node()->kind() == c10::prim::Param) {
        bool seen = false;
        for (Value* o : out) seen = seen || o == v;
        if (!seen) out.push_back(v);
      }
    }
    for (Block* b : n->blocks()) collect_captured(b, outer, out);
  }
  for (Value* v : block->outputs()) {
    if (v->node()->owningBlock() == outer) {
      bool seen = false;
      for (Value* o : out) seen = seen || o == v;
      if (!seen) out.push_back(v);
    }
  }
}

bool tensor_like(const c10::TypePtr& t) {
  if (t->kind() == c10::TypeKind::TensorType) return true;
  if (auto opt = t->cast<c10::OptionalType>()) return opt->getElementType()->kind() == c10::TypeKind::TensorType;
  return false;
}

void write_constant(std::ostream& out, const c10::IValue& v) {
  if (v.isBool()) {
    out << "b " << (v.toBool() ? 1 : 0);
  } else if (v.isInt()) {
    out << "i " << v.toInt();
  } else if (v.isDouble()) {
    out << "f " << v.toDouble();
  } else if (v.isNone()) {
    out << "n";
  } else if (v.isIntList()) {
    out << "il ";
    auto list = v.toIntVector();
    if (list.empty()) out << "-";
    for (size_t i = 0; i < list.size(); ++i) out << (i ? "," : "") << list[i];
  } else if (v.isString()) {
    out << "s " << token(v.toStringRef());
  } else {
    out << "o";
  }
}

std::string describe(torch::jit::Module& module, const at::Tensor& input) {
  auto graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  ModuleResolver r{module, graph->inputs().at(0), {}};
  fold_attributes(graph->block(), r);
  torch::jit::ConstantPropagation(graph);
  torch::jit::EliminateDeadCode(graph);
  // Module paths again: the passes above created and removed nodes.
  r.paths.clear();
  for (Node* n : graph->nodes()) {
    if (n->kind() != c10::prim::GetAttr) continue;
    std::string parent;
    if (!r.resolve(n->input(0), parent)) continue;
    auto m = submodule(module, parent);
    const std::string name = n->s(c10::attr::name);
    if (m.attr(name).isModule()) r.paths[n->output()] = join_path(parent, name);
  }

  // The probe: every top-level tensor value becomes an extra output, and the graph runs once.
  auto probe = graph->copy();
  std::vector<Value*> probed;
  std::vector<Value*> probe_values;
  {
    auto g_it = graph->nodes().begin();
    auto p_it = probe->nodes().begin();
    for (; g_it != graph->nodes().end(); ++g_it, ++p_it) {
      for (size_t i = 0; i < g_it->outputs().size(); ++i) {
        if (tensor_like(g_it->outputs()[i]->type())) {
          probed.push_back(g_it->outputs()[i]);
          probe_values.push_back(p_it->outputs()[i]);
        }
      }
    }
  }
  std::unordered_map<Value*, std::vector<int64_t>> shapes;
  if (graph->inputs().size() > 1) shapes[graph->inputs()[1]] = input.sizes().vec();
  {
    auto tuple = probe->insertNode(probe->createTuple(probe_values));
    while (!probe->outputs().empty()) probe->eraseOutput(0);
    probe->registerOutput(tuple->output());
    torch::jit::Code code(probe, "tch_prune_shrink_probe");
    torch::jit::InterpreterState state(code);
    torch::jit::Stack stack{module._ivalue(), input};
    {
      at::NoGradGuard no_grad;
      state.run(stack);
    }
    auto elements = stack.back().toTupleRef().elements();
    for (size_t i = 0; i < probed.size(); ++i) {
      if (elements[i].isTensor()) shapes[probed[i]] = elements[i].toTensor().sizes().vec();
    }
  }

  std::ostringstream out;
  // Floats with as many digits as read them back exactly.
  out.precision(std::numeric_limits<double>::max_digits10);
  // Submodules: path, class, int constants of the class.
  for (const auto& item : module.named_modules()) {
    auto type = item.value.type();
    out << "M " << (item.name.empty() ? "." : item.name) << " " << token(type->name()->qualifiedName());
    for (size_t i = 0; i < type->numConstants(); ++i) {
      auto c = type->getConstant(i);
      if (c.isInt()) out << " " << type->getConstantName(i) << "=" << c.toInt();
    }
    out << "\n";
  }
  for (const auto& p : module.named_parameters(true)) out << "A " << p.name << " param\n";
  for (const auto& b : module.named_buffers(true)) out << "A " << b.name << " buffer\n";

  auto write_value = [&](Value* v) {
    out << "V " << v->unique() << " ";
    std::string path;
    if (r.resolve(v, path)) {
      out << "m " << (path.empty() ? "." : path);
    } else if (v->node()->kind() == c10::prim::Constant && v->node()->owningBlock() == graph->block()) {
      auto c = torch::jit::toIValue(v);
      if (c && c->isTensor()) {
        auto sizes = c->toTensor().sizes();
        out << "t " << sizes.size();
        for (auto d : sizes) out << " " << d;
      } else if (c) {
        out << "c ";
        write_constant(out, *c);
      } else {
        out << "o";
      }
    } else if (tensor_like(v->type())) {
      auto it = shapes.find(v);
      if (it == shapes.end()) {
        out << (v->type()->kind() == c10::TypeKind::TensorType ? "t ?" : "o");
      } else {
        out << "t " << it->second.size();
        for (auto d : it->second) out << " " << d;
      }
    } else {
      out << "o";
    }
    out << "\n";
  };
  auto x = graph->inputs();
  for (Value* v : x) write_value(v);
  for (Node* n : graph->nodes()) {
    for (Value* v : n->outputs()) write_value(v);
  }
  out << "I";
  for (Value* v : x) out << " " << v->unique();
  out << "\n";
  for (Node* n : graph->nodes()) {
    std::vector<Value*> inputs(n->inputs().begin(), n->inputs().end());
    for (Block* b : n->blocks()) collect_captured(b, graph->block(), inputs);
    out << "N " << n->kind().toQualString() << " ";
    if (n->kind() == c10::prim::GetAttr) {
      std::string parent;
      if (r.resolve(n->input(0), parent)) {
        out << join_path(parent, n->s(c10::attr::name));
      } else {
        out << "?" << token(n->s(c10::attr::name));
      }
    } else {
      out << "-";
    }
    out << " " << inputs.size();
    for (Value* v : inputs) out << " " << v->unique();
    out << " " << n->outputs().size();
    for (Value* v : n->outputs()) out << " " << v->unique();
    out << (n->blocks().empty() ? "" : " B") << "\n";
  }
  out << "O";
  for (Value* v : graph->outputs()) out << " " << v->unique();
  out << "\n";
  return out.str();
}

void split_name(const std::string& dotted, std::string& parent, std::string& leaf) {
  auto dot = dotted.rfind('.');
  parent = dot == std::string::npos ? std::string() : dotted.substr(0, dot);
  leaf = dot == std::string::npos ? dotted : dotted.substr(dot + 1);
}

// The submodule holding the parameter or buffer `dotted`, and its name there in `leaf`; throws
// when there is no such tensor.
torch::jit::Module tensor_owner(const torch::jit::Module& module, const char* dotted, std::string& leaf) {
  std::string parent;
  split_name(dotted, parent, leaf);
  auto m = submodule(module, parent);
  if (!m.hasattr(leaf) || !m.attr(leaf).isTensor())
    throw std::runtime_error(std::string("no tensor `") + dotted + "` in the module");
  return m;
}

size_t set_groups_in(Block* block, int64_t old_groups, int64_t new_groups) {
  size_t changed = 0;
  for (Node* n : block->nodes()) {
    for (Block* b : n->blocks()) changed += set_groups_in(b, old_groups, new_groups);
    auto kind = n->kind();
    if (kind != c10::aten::conv1d && kind != c10::aten::conv2d && kind != c10::aten::conv3d) continue;
    if (n->inputs().size() < 7) continue;
    Value* g = n->input(6);
    auto c = torch::jit::toIValue(g);
    if (!c || !c->isInt() || c->toInt() != old_groups) continue;
    torch::jit::WithInsertPoint guard(n);
    n->replaceInput(6, block->owningGraph()->insertConstant(c10::IValue(new_groups)));
    ++changed;
  }
  return changed;
}

}  // namespace

extern "C" {

// Every method of every submodule caches its optimized execution plan, with callees inlined and
// shapes profiled: after a rewrite they are dropped, so the next run compiles the new module.
char* tp_shrink_reset_plans(torch::jit::Module* module) noexcept {
  return tp::protect([&] {
    for (const auto& m : module->modules()) {
      for (auto& method : m.get_methods()) torch::jit::toGraphFunction(method.function()).clear_optimized_graphs();
    }
  });
}

char* tp_shrink_describe(torch::jit::Module* module, const at::Tensor* input, char** text) noexcept {
  return tp::protect([&] { *text = tp::copy_string(describe(*module, *input)); });
}

char* tp_shrink_get_tensor(torch::jit::Module* module, const char* dotted, at::Tensor** tensor) noexcept {
  return tp::protect([&] {
    std::string leaf;
    auto m = tensor_owner(*module, dotted, leaf);
    *tensor = new at::Tensor(m.attr(leaf).toTensor());
  });
}

char* tp_shrink_set_tensor(torch::jit::Module* module, const char* dotted, const at::Tensor* value) noexcept {
  return tp::protect([&] {
    std::string leaf;
    auto m = tensor_owner(*module, dotted, leaf);
    bool requires_grad = m.attr(leaf).toTensor().requires_grad();
    at::Tensor t = value->detach().clone();
    t.set_requires_grad(requires_grad);
    m.setattr(leaf, t);
  });
}

char* tp_shrink_set_int(torch::jit::Module* module, const char* path, const char* name, int64_t value,
                        int* slot) noexcept {
  return tp::protect([&] {
    auto m = submodule(*module, path);
    auto type = m.type();
    if (type->findConstantSlot(name)) {
      if (!type->getConstant(name).isInt()) {
        *slot = 0;
        return;
      }
      type->unsafeRemoveConstant(name);
      type->addConstant(name, c10::IValue(value));
      *slot = 2;
    } else if (type->findAttributeSlot(name) && m.attr(name).isInt()) {
      m.setattr(name, c10::IValue(value));
      *slot = 1;
    } else {
      *slot = 0;
    }
  });
}

char* tp_shrink_set_groups(torch::jit::Module* module, const char* path, int64_t old_groups, int64_t new_groups,
                           int64_t* changed) noexcept {
  return tp::protect([&] {
    auto m = submodule(*module, path);
    int64_t calls = 0;
    for (auto& method : m.get_methods()) {
      auto& fn = torch::jit::toGraphFunction(method.function());
      calls += static_cast<int64_t>(set_groups_in(fn.graph()->block(), old_groups, new_groups));
    }
    *changed = calls;
  });
}

}  // extern "C"
