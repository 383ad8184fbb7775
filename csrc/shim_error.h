// Errors of tch-rpo's C++ shims (grad.cpp, rms_norm.cpp, bf16_head.cpp): an entry point returns nullptr,
// or a `malloc`ed message that only `tch_rpo_grad_free_error` (grad.cpp) frees. No C++ exception crosses
// the boundary.
#pragma once

#include <exception>

extern "C" char* tch_rpo_copy_error(const char* what);

// Runs `body` (returning nullptr or a message from `tch_rpo_copy_error`) and turns any C++ exception it
// throws into a message.
template <typename Body>
char* tch_rpo_guard(Body&& body) {
  const char* what = "unknown C++ exception";
  try {
    return body();
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  return tch_rpo_copy_error(what);
}
