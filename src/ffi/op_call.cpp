// One operator of libtorch's registry called by name through the dispatcher, with named
// arguments: what running a torch.export program node by node needs (src/model/interpreter.rs).
// An exported node names its operator (`aten::conv2d`, overload ``) and gives its arguments by
// name, leaving out those at their default: the schema orders them and supplies the defaults.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/ScalarOps.h>
#include <ATen/core/jit_type.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "tch_prune.h"

namespace {

// The value of one argument as the schema's type `type` takes it.
c10::IValue value_of(const TpOpArg& arg, const c10::TypePtr& type, const std::string& where) {
  // A number where the schema takes a tensor (`mul.Tensor`'s `other`): a 0-dim tensor marked as
  // a wrapped number, as Python's argument parser makes it, so that it takes part in type
  // promotion as a scalar.
  const bool wants_tensor = type->kind() == c10::TypeKind::TensorType ||
                            (type->kind() == c10::TypeKind::OptionalType &&
                             type->castRaw<c10::OptionalType>()->getElementType()->kind() ==
                                 c10::TypeKind::TensorType);
  if (wants_tensor && (arg.kind == TP_ARG_BOOL || arg.kind == TP_ARG_INT || arg.kind == TP_ARG_FLOAT)) {
    const c10::Scalar scalar = arg.kind == TP_ARG_FLOAT  ? c10::Scalar(arg.f)
                               : arg.kind == TP_ARG_INT ? c10::Scalar(arg.i)
                                                        : c10::Scalar(arg.i != 0);
    at::Tensor wrapped = c10::scalar_to_tensor(scalar);
    wrapped.unsafeGetTensorImpl()->set_wrapped_number(true);
    return c10::IValue(wrapped);
  }
  switch (arg.kind) {
    case TP_ARG_NONE:
      return c10::IValue();
    case TP_ARG_BOOL:
      return c10::IValue(arg.i != 0);
    case TP_ARG_INT:
    case TP_ARG_SCALAR_TYPE:
    case TP_ARG_MEMORY_FORMAT:
    case TP_ARG_LAYOUT:
      // ScalarType, MemoryFormat and Layout travel as integers on the stack.
      return c10::IValue(arg.i);
    case TP_ARG_FLOAT:
      return c10::IValue(arg.f);
    case TP_ARG_INTS:
      return c10::IValue(std::vector<int64_t>(arg.ints, arg.ints + arg.len));
    case TP_ARG_FLOATS:
      return c10::IValue(std::vector<double>(arg.floats, arg.floats + arg.len));
    case TP_ARG_TENSOR:
      return c10::IValue(*arg.tensors[0]);
    case TP_ARG_TENSORS: {
      // `Tensor?[]` (index's indices) takes a list of optionals, `Tensor[]` a plain list.
      c10::TypePtr element;
      if (auto list = type->castRaw<c10::ListType>()) element = list->getElementType();
      if (element && element->kind() == c10::TypeKind::OptionalType) {
        // Built as a generic list of IValues (None or a tensor) typed `Tensor?`: pushing
        // optionals into a typed list makes GCC 12 warn falsely inside libtorch's headers.
        c10::impl::GenericList values(element);
        for (size_t i = 0; i < arg.len; ++i) {
          values.push_back(arg.tensors[i] ? c10::IValue(*arg.tensors[i]) : c10::IValue());
        }
        return c10::IValue(std::move(values));
      }
      std::vector<at::Tensor> values;
      for (size_t i = 0; i < arg.len; ++i) {
        if (!arg.tensors[i]) throw std::invalid_argument(where + " takes no None in its list");
        values.push_back(*arg.tensors[i]);
      }
      return c10::IValue(values);
    }
    case TP_ARG_DEVICE:
      return c10::IValue(c10::Device(std::string(arg.text)));
    case TP_ARG_STRING:
      return c10::IValue(std::string(arg.text));
    default:
      throw std::invalid_argument(where + " has a value of an unknown kind");
  }
}

}  // namespace

extern "C" char* tp_op_call(const char* name, const char* overload, const TpOpArg* args,
                            size_t count, at::Tensor*** outputs, size_t* outputs_count) noexcept {
  return tp::protect([&] {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
    const auto& schema = op.schema();
    const std::string op_name = std::string(name) + (*overload ? "." : "") + overload;
    std::vector<bool> used(count, false);
    torch::jit::Stack stack;
    for (const auto& expected : schema.arguments()) {
      const std::string where = op_name + "'s argument " + expected.name();
      size_t found = count;
      for (size_t i = 0; i < count; ++i) {
        if (expected.name() == args[i].name) {
          found = i;
          break;
        }
      }
      if (found < count) {
        used[found] = true;
        stack.push_back(value_of(args[found], expected.type(), where));
      } else if (expected.default_value()) {
        stack.push_back(*expected.default_value());
      } else {
        throw std::invalid_argument(where + " is required and the node does not give it");
      }
    }
    for (size_t i = 0; i < count; ++i) {
      if (!used[i]) {
        throw std::invalid_argument(op_name + " has no argument " + args[i].name);
      }
    }
    op.callBoxed(&stack);
    // Every returned tensor in order, a list's flattened; anything else is an undefined tensor
    // (the caller knows from the node which outputs are tensors).
    std::vector<at::Tensor> results;
    for (const auto& value : stack) {
      if (value.isTensor()) {
        results.push_back(value.toTensor());
      } else if (value.isTensorList()) {
        for (const at::Tensor& t : value.toTensorVector()) results.push_back(t);
      } else {
        results.push_back(at::Tensor());
      }
    }
    auto** handles = static_cast<at::Tensor**>(std::malloc(sizeof(at::Tensor*) * (results.size() + 1)));
    if (handles == nullptr) throw std::bad_alloc();
    for (size_t i = 0; i < results.size(); ++i) handles[i] = new at::Tensor(std::move(results[i]));
    *outputs = handles;
    *outputs_count = results.size();
  });
}
