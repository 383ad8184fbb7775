// The token embedding as one autograd node (`tch_rpo::autograd::embedding`, feature `autograd`): the forward
// is `at::embedding` (the rows of the weight at the ids), the backward adds each position's gradient row to
// the row of its token. Autograd's own embedding backward builds a dense `[V, H]` gradient (zeros, then the
// rows index-added) which `AccumulateGrad` then adds to `.grad`: with a tied LM head, whose gradient already
// sits in `.grad` when the embedding's arrives, that is a second `[V, H]` tensor alive at the end of the
// backward pass. Here, when the weight is a leaf whose `.grad` is defined, dense, and of the gradient's dtype,
// shape and device, the rows are index-added into that `.grad` in place and no gradient is returned to
// autograd; otherwise the dense gradient is returned as autograd's embedding backward would.
// Tensors are tch's `at::Tensor*`; no C++ exception crosses this boundary.
#include <torch/csrc/autograd/custom_function.h>

#include <ATen/ATen.h>

#include "shim_error.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct EmbeddingFn : public torch::autograd::Function<EmbeddingFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& ids) {
    ctx->save_for_backward({ids});
    // The weight itself (not its values), to reach its `.grad` in the backward.
    ctx->saved_data["weight"] = weight;
    return at::embedding(weight, ids);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& ids = saved[0];
    at::Tensor weight = ctx->saved_data["weight"].toTensor();
    const at::Tensor& gy = grads[0];
    if (!gy.defined()) {
      return {at::Tensor(), at::Tensor()};
    }
    at::Tensor grad = weight.is_leaf() ? weight.mutable_grad() : at::Tensor();
    const bool in_place = grad.defined() && grad.layout() == at::kStrided && !grad.requires_grad() &&
                          grad.scalar_type() == gy.scalar_type() && grad.sizes() == weight.sizes() &&
                          grad.device() == gy.device();
    if (in_place) {
      const int64_t h = weight.size(1);
      grad.index_add_(0, ids.reshape({-1}), gy.reshape({-1, h}));
      return {at::Tensor(), at::Tensor()};
    }
    return {at::embedding_dense_backward(gy, ids, weight.size(0), -1, false), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = the rows of `weight` `[V, H]` at `ids` (`[...]` integers), as above (a new tensor the caller owns,
// tch's `Tensor::from_ptr`). The caller checks the shapes, dtypes and devices. Returns nullptr, or a message
// to free with `tch_rpo_grad_free_error`.
char* tch_rpo_embedding(const at::Tensor* weight, const at::Tensor* ids, at::Tensor** out) {
  return tch_rpo_guard([&]() -> char* {
    *out = new at::Tensor(EmbeddingFn::apply(*weight, *ids));
    return nullptr;
  });
}

}  // extern "C"
