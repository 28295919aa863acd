// The TorchScript side of calibrated pruning (src/model/calibrate.rs): a copy of the module's
// inlined `forward` graph that also returns the input of every `aten::linear` whose weight is
// one of the asked parameters, so that a Wanda or SparseGPT calibration sees each layer's inputs
// without touching the model's code. The copy is compiled once and run once per calibration
// batch; the module itself (its methods, its code) is left alone.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tch_prune.h"

using torch::jit::Node;
using torch::jit::Value;

struct TpCalibrationProbe {
  torch::jit::Code code;
  size_t taps;
};

namespace {

// The dotted path of a module value: `self`, or a chain of GetAttr from it.
bool module_path(Value* self, Value* v, std::string& path) {
  if (v == self) {
    path.clear();
    return true;
  }
  Node* n = v->node();
  if (n->kind() != c10::prim::GetAttr) return false;
  std::string parent;
  if (!module_path(self, n->input(0), parent)) return false;
  const std::string name = n->s(c10::attr::name);
  path = parent.empty() ? name : parent + "." + name;
  return true;
}

// The last line of `text` of the form `SomethingError: message`, else the first line.
std::string what_failed(const std::string& text) {
  std::stringstream ss(text);
  std::string line, first, found;
  while (std::getline(ss, line)) {
    if (first.empty()) first = line;
    auto colon = line.find("Error: ");
    if (colon != std::string::npos && line.find(' ') > colon) found = line;
  }
  return found.empty() ? first : found;
}

}  // namespace

char* tp_calibration_probe_new(torch::jit::Module* module, const char* names,
                               TpCalibrationProbe** probe, char** taps) noexcept {
  return tp::protect([&] {
    std::set<std::string> wanted;
    {
      std::stringstream ss(names);
      std::string line;
      while (std::getline(ss, line)) {
        if (!line.empty()) wanted.insert(line);
      }
    }
    auto graph = module->get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    if (graph->outputs().size() != 1) throw std::runtime_error("forward has several outputs");
    Value* self = graph->inputs().at(0);
    std::vector<Value*> outputs{graph->outputs()[0]};
    std::string list;
    // The top-level nodes only: a value computed inside a loop or a branch is not one the graph
    // can return. The Rust side names the layers left out.
    for (Node* n : graph->nodes()) {
      if (n->kind() != c10::aten::linear) continue;
      Node* weight = n->input(1)->node();
      if (weight->kind() != c10::prim::GetAttr) continue;
      std::string path;
      if (!module_path(self, weight->input(0), path)) continue;
      const std::string field = weight->s(c10::attr::name);
      const std::string name = path.empty() ? field : path + "." + field;
      if (wanted.count(name) == 0) continue;
      outputs.push_back(n->input(0));
      list += name + "\n";
    }
    auto tuple = graph->insertNode(graph->createTuple(outputs));
    graph->eraseOutput(0);
    graph->registerOutput(tuple->output());
    auto made = std::make_unique<TpCalibrationProbe>(
        TpCalibrationProbe{torch::jit::Code(graph, "tch_prune_calibration_probe"), outputs.size() - 1});
    char* text = tp::copy_string(list);
    *taps = text;
    *probe = made.release();
  });
}

char* tp_calibration_probe_run(const TpCalibrationProbe* probe, torch::jit::Module* module,
                               at::Tensor* const* inputs, size_t count,
                               at::Tensor** taps) noexcept {
  return tp::protect([&] {
    torch::jit::Stack stack{module->_ivalue()};
    for (size_t i = 0; i < count; ++i) stack.emplace_back(*inputs[i]);
    torch::jit::InterpreterState state(probe->code);
    try {
      at::NoGradGuard no_grad;
      state.run(stack);
    } catch (const std::exception& e) {
      // The interpreter's message starts with "The following operation failed in the
      // TorchScript interpreter." and a traceback; what failed is its last `...Error: ` line.
      throw std::runtime_error(what_failed(e.what()));
    }
    auto elements = stack.back().toTupleRef().elements();
    std::vector<std::unique_ptr<at::Tensor>> out;
    for (size_t i = 0; i < probe->taps; ++i) {
      const auto& e = elements.at(i + 1);
      if (!e.isTensor()) throw std::runtime_error("a linear layer's input is not a tensor");
      out.push_back(std::make_unique<at::Tensor>(e.toTensor()));
    }
    for (size_t i = 0; i < probe->taps; ++i) taps[i] = out[i].release();
  });
}

void tp_calibration_probe_free(TpCalibrationProbe* probe) noexcept { delete probe; }
