// RMSNorm as one autograd node (`tch_rpo::models`' decoders, feature `autograd`): the forward is the same
// ATen ops as the composite form (so the same values), but the node saves only its input (in the input's
// dtype), the weight and the `[..., 1]` f32 reciprocal RMS, where the composite form's graph keeps the f32
// upcast of the input and the f32 normalized values (8 bytes per element for bf16 inputs). The backward
// recomputes the normalized values from the saved input.
//
// With x̂ = f32(x)·r, r = (mean(f32(x)²) + eps)^(−1/2) over the last dimension:
//   one_plus (Gemma):  y = dtype(x̂ · (f32(w) + 1))
//   otherwise (Llama): y = w · dtype(x̂)
// and, for the incoming gradient gy, with g the gradient reaching x̂ (gy·(w + 1) in f32, or f32(gy·w)):
//   dx = r · (g − x̂ · mean(g · x̂)),   dw = Σ gy·x̂ over every dimension but the last (one_plus), or
//   Σ gy·dtype(x̂) (otherwise), both summed in f32 and rounded to w's dtype once.
// Tensors are tch's `at::Tensor*`; no C++ exception crosses this boundary.
#include <torch/csrc/autograd/custom_function.h>

#include <ATen/ATen.h>

#include "shim_error.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps,
                            bool one_plus) {
    const at::Tensor xf = x.to(at::kFloat);
    const at::Tensor r = xf.square().mean({-1}, true, at::kFloat).add(eps).rsqrt();
    const at::Tensor normed = xf.mul(r);
    at::Tensor y;
    if (one_plus) {
      y = normed.mul(w.to(at::kFloat).add(1.0)).to(x.scalar_type());
    } else {
      y = w.mul(normed.to(x.scalar_type()));
    }
    ctx->save_for_backward({x, w, r});
    ctx->saved_data["one_plus"] = one_plus;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor& r = saved[2];
    const bool one_plus = ctx->saved_data["one_plus"].toBool();
    const at::Tensor& gy = grads[0];
    const int64_t h = x.size(-1);
    const at::Tensor normed = x.to(at::kFloat).mul(r);
    at::Tensor g;
    at::Tensor gw;
    if (one_plus) {
      const at::Tensor gyf = gy.to(at::kFloat);
      g = gyf.mul(w.to(at::kFloat).add(1.0));
      if (ctx->needs_input_grad(1)) {
        gw = gyf.mul(normed).reshape({-1, h}).sum(0).to(w.scalar_type());
      }
    } else {
      g = gy.mul(w).to(at::kFloat);
      if (ctx->needs_input_grad(1)) {
        gw = gy.to(at::kFloat).mul(normed.to(x.scalar_type()).to(at::kFloat)).reshape({-1, h}).sum(0)
                 .to(w.scalar_type());
      }
    }
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor dot = g.mul(normed).mean({-1}, true);
      dx = g.sub(normed.mul(dot)).mul(r).to(x.scalar_type());
    }
    return {dx, gw, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// `*out` = RMSNorm(x; w, eps) as above (a new tensor the caller owns, tch's `Tensor::from_ptr`). The caller
// checks that w is `[x.size(-1)]` on x's device. Returns nullptr, or a message to free with
// `tch_rpo_grad_free_error`.
char* tch_rpo_rms_norm(const at::Tensor* x, const at::Tensor* w, double eps, int one_plus, at::Tensor** out) {
  return tch_rpo_guard([&]() -> char* {
    *out = new at::Tensor(RmsNormFn::apply(*x, *w, eps, one_plus != 0));
    return nullptr;
  });
}

}  // extern "C"
