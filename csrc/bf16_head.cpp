// The fused head's bf16 rows on CPU (`tch_rpo::fused`, feature `autograd`): softmax statistics and the
// logits' gradient of `[n, V]` bf16 logits, computed in f32 (sums in f64) without an f32 copy of the rows.
// One pass reads a row for its maximum, a second for Σ exp(z − max) (the row, 2·V bytes, is then in cache);
// the gradient pass overwrites the row with its bf16 gradient. Rows run in parallel on libtorch's intra-op
// threads (`at::parallel_for`, the `set_num_threads` setting).
//
// Arithmetic, element by element the same as the unfused path's f32 upcast (`x = f32(z)·s`, `x − m` and
// `x − lse` in f32, the gradient `(p·(−c) + c·[j = t])·s` in f32, rounded to bf16 to nearest even, NaN to
// 0x7FC0 like c10::BFloat16), except exp: a Cody–Waite reduction and a degree-7 Taylor polynomial (within 4
// f32 ulps: truncation 2⁻²⁷, Horner's roundings), flushed to 0 below exp(−87.34) (the
// smallest normal f32; the dropped terms are < 1.2e−38 each). The row sum is taken in f64 (16 lanes), so the
// log-sum-exp has the exp's and one f32 rounding's error only.
//
// The loops run on 16-lane vectors (GCC's vector extensions); `target_clones` builds them for x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, chosen at load time by the CPU.
// Errors: a target outside [0, V) is reported (nothing is read out of bounds); no C++ exception crosses.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "shim_error.h"

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TCH_RPO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TCH_RPO_CLONES
#endif
#define TCH_RPO_INLINE inline __attribute__((always_inline))

// 16 lanes (GCC/Clang vector extensions: one zmm on AVX-512, two ymm on AVX2, four xmm on the baseline).
constexpr int kLanes = 16;
typedef float VF __attribute__((vector_size(4 * kLanes)));
typedef int32_t VI __attribute__((vector_size(4 * kLanes)));
typedef uint32_t VU __attribute__((vector_size(4 * kLanes)));
typedef uint16_t VH __attribute__((vector_size(2 * kLanes)));
typedef float VF8 __attribute__((vector_size(4 * kLanes / 2)));
typedef double VD8 __attribute__((vector_size(8 * kLanes / 2)));

// The element-wise formulas below are templates over a float `F` (one value, the rows' tails) and `VF`
// (16 values): the same arithmetic either way. These overloads are the bit casts and conversions.
TCH_RPO_INLINE float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
TCH_RPO_INLINE VF as_float(VU u) { return reinterpret_cast<VF&>(u); }
TCH_RPO_INLINE uint32_t as_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
TCH_RPO_INLINE VU as_bits(VF f) { return reinterpret_cast<VU&>(f); }
TCH_RPO_INLINE uint32_t widen(uint16_t h) { return h; }
TCH_RPO_INLINE VU widen(VH h) { return __builtin_convertvector(h, VU); }
TCH_RPO_INLINE uint16_t narrow(uint32_t u) { return static_cast<uint16_t>(u); }
TCH_RPO_INLINE VH narrow(VU u) { return __builtin_convertvector(u, VH); }
TCH_RPO_INLINE uint32_t exponent_bits(float k) { return static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23; }
TCH_RPO_INLINE VU exponent_bits(VF k) { return __builtin_convertvector(__builtin_convertvector(k, VI) + 127, VU) << 23; }
template <typename T, typename S>
TCH_RPO_INLINE T splat(S x) {
  return T{} + x;
}

template <typename F, typename U, typename H>
TCH_RPO_INLINE F bf16_to_f32(H h) {
  return as_float(static_cast<U>(widen(h) << 16));
}

// Round to nearest even; NaN to the canonical quiet NaN (c10::BFloat16's rounding).
template <typename F, typename U, typename H>
TCH_RPO_INLINE H f32_to_bf16(F f) {
  const U u = as_bits(f);
  const U rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const U nan = splat<U>(0x7FC0u);
  return narrow((u & 0x7FFFFFFFu) > splat<U>(0x7F800000u) ? nan : rounded);
}

// exp(x) for x ≤ 88 (the callers' arguments are ≤ 0 up to rounding): 0 below −87.336 (exp there is
// < 2⁻¹²⁶), NaN for NaN.
template <typename F>
TCH_RPO_INLINE F exp_f32(F x) {
  const F lo = splat<F>(-87.33654f);
  const F hi = splat<F>(88.0f);
  const auto under = x < lo;
  F c = under ? lo : x;
  c = c > hi ? hi : c;
  // k = round(c / ln 2) by the 1.5·2²³ trick (exact for |k| < 2²²; no call to floorf, so it vectorizes).
  const F k = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // Cody–Waite: ln 2 = 0.693359375 − 2.12194440e−4 (the first part exact in 9 bits, so k·part is exact).
  F r = c - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  F p = splat<F>(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const F out = p * as_float(exponent_bits(k));
  return under ? splat<F>(0.0f) : out;
}

TCH_RPO_INLINE VF load(const uint16_t* z) {
  VH h;
  std::memcpy(&h, z, sizeof h);
  return bf16_to_f32<VF, VU>(h);
}

// One row: lse = m + log Σ exp(x_j − m) with x_j = f32(z_j)·s and m = max x_j, and logp = x_t − lse.
TCH_RPO_CLONES
void row_stats(const uint16_t* z, int64_t v, float s, int64_t t, float* lse, float* logp) {
  const int64_t body = v - v % kLanes;
  VF mx = splat<VF>(-std::numeric_limits<float>::infinity());
  VI nan{};
  for (int64_t j = 0; j < body; j += kLanes) {
    const VF x = load(z + j) * s;
    mx = x > mx ? x : mx;
    nan |= x != x;
  }
  float m = -std::numeric_limits<float>::infinity();
  bool any_nan = false;
  for (int l = 0; l < kLanes; ++l) {
    m = mx[l] > m ? mx[l] : m;
    any_nan |= nan[l] != 0;
  }
  for (int64_t j = body; j < v; ++j) {
    const float x = bf16_to_f32<float, uint32_t>(z[j]) * s;
    m = x > m ? x : m;
    any_nan |= x != x;
  }
  const float x_t = bf16_to_f32<float, uint32_t>(z[t]) * s;
  if (any_nan) {
    *lse = std::numeric_limits<float>::quiet_NaN();
    *logp = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  // libtorch's logsumexp shifts by 0 when the maximum is infinite.
  const float shift = std::isinf(m) ? 0.0f : m;
  VD8 low{};
  VD8 high{};
  for (int64_t j = 0; j < body; j += kLanes) {
    const VF e = exp_f32(load(z + j) * s - shift);
    VF8 half[2];
    std::memcpy(half, &e, sizeof half);
    low += __builtin_convertvector(half[0], VD8);
    high += __builtin_convertvector(half[1], VD8);
  }
  double total = 0.0;
  for (int l = 0; l < kLanes / 2; ++l) {
    total += low[l] + high[l];
  }
  for (int64_t j = body; j < v; ++j) {
    total += static_cast<double>(exp_f32(bf16_to_f32<float, uint32_t>(z[j]) * s - shift));
  }
  const double lse_d = static_cast<double>(shift) + std::log(total);
  *lse = static_cast<float>(lse_d);
  *logp = static_cast<float>(static_cast<double>(x_t) - lse_d);
}

// One row in place: z_j ← bf16((exp(x_j − lse)·(−c) + c·[j = t])·s).
TCH_RPO_CLONES
void row_grad(uint16_t* z, int64_t v, float s, int64_t t, float lse, float c) {
  const float neg = -c;
  const float x_t = bf16_to_f32<float, uint32_t>(z[t]) * s;
  const float g_t = (exp_f32(x_t - lse) * neg + c) * s;
  const int64_t body = v - v % kLanes;
  for (int64_t j = 0; j < body; j += kLanes) {
    const VF x = load(z + j) * s;
    const VH out = f32_to_bf16<VF, VU, VH>(exp_f32(x - lse) * neg * s);
    std::memcpy(z + j, &out, sizeof out);
  }
  for (int64_t j = body; j < v; ++j) {
    const float x = bf16_to_f32<float, uint32_t>(z[j]) * s;
    z[j] = f32_to_bf16<float, uint32_t, uint16_t>(exp_f32(x - lse) * neg * s);
  }
  z[t] = f32_to_bf16<float, uint32_t, uint16_t>(g_t);
}

// Runs `body(row)` for rows [0, n) on libtorch's threads after checking every target; returns nullptr or a
// message from `tch_rpo_copy_error`.
template <typename Body>
char* for_rows(int64_t n, int64_t v, const int64_t* targets, Body body) {
  return tch_rpo_guard([&]() -> char* {
    for (int64_t r = 0; r < n; ++r) {
      if (targets[r] < 0 || targets[r] >= v) {
        return tch_rpo_copy_error("a target id is outside [0, V)");
      }
    }
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        body(r);
      }
    });
    return nullptr;
  });
}

}  // namespace

extern "C" {

// `z`: n rows of v bf16 values, contiguous; `targets`: n ids; `lse`, `logp`: n floats written.
// Returns nullptr, or a message to free with `tch_rpo_grad_free_error`.
char* tch_rpo_bf16_rows_stats(const uint16_t* z, int64_t n, int64_t v, float scale, const int64_t* targets,
                              float* lse, float* logp) {
  return for_rows(n, v, targets, [&](int64_t r) {
    row_stats(z + r * v, v, scale, targets[r], lse + r, logp + r);
  });
}

// `z`: n rows of v bf16 logits, overwritten with their gradient; `lse`, `coef`: n floats each.
char* tch_rpo_bf16_rows_grad(uint16_t* z, int64_t n, int64_t v, float scale, const int64_t* targets,
                             const float* lse, const float* coef) {
  return for_rows(n, v, targets, [&](int64_t r) {
    row_grad(z + r * v, v, scale, targets[r], lse[r], coef[r]);
  });
}

}  // extern "C"
