// C shim for `tch_rpo::autograd` (compiled by build.rs with the `autograd` feature, implied by `train`): sets or releases a tensor's
// `.grad`, which tch does not expose — what PyTorch's `param.grad = g` and `param.grad = None`
// (`zero_grad(set_to_none=True)`) do.
// Tensors are tch's `at::Tensor*` (torch-sys's `tensor` type). No C++ exception crosses this boundary.
#include <ATen/core/Tensor.h>

#include <cstdlib>
#include <cstring>

#include "shim_error.h"

namespace {
// Returned when even the message cannot be allocated; never freed.
char kNoMemory[] = "out of memory while reporting an error of a tch-rpo C++ shim";
}  // namespace

extern "C" {

// Makes `grad` (a handle to the same tensor) `tensor`'s gradient, or, when `grad` is null, drops `tensor`'s
// reference to its gradient (`.grad` becomes undefined; the memory is freed once no other handle holds it).
// The caller checks shapes, dtypes and devices. Returns nullptr, or a `malloc`ed message (free it with
// `tch_rpo_grad_free_error`).
char* tch_rpo_grad_set(at::Tensor* tensor, const at::Tensor* grad) {
  return tch_rpo_guard([&]() -> char* {
    if (grad != nullptr) {
      tensor->mutable_grad() = *grad;
    } else if (tensor->grad().defined()) {
      tensor->mutable_grad().reset();
    }
    return nullptr;
  });
}

// A `malloc`ed copy of `what` (the shims' error messages), or a static message when none can be allocated.
char* tch_rpo_copy_error(const char* what) {
  char* out = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (out == nullptr) {
    return kNoMemory;
  }
  std::strcpy(out, what);
  return out;
}

void tch_rpo_grad_free_error(char* message) {
  if (message != kNoMemory) {
    std::free(message);
  }
}

}  // extern "C"
