//! The C functions of `csrc/dist.cpp` (compiled by build.rs). Each returns null on success or a
//! `malloc`ed message (freed with [`tch_rpo_dist_free_error`]) and sets `kind` to one of the codes below.

use std::os::raw::{c_char, c_int, c_void};
use torch_sys::C_tensor;

/// Any other c10d / libtorch failure.
pub(crate) const KIND_OTHER: c_int = 1;
/// A bounded wait ran out.
pub(crate) const KIND_TIMEOUT: c_int = 2;
/// A connection to a peer (or the store) was closed, reset or refused.
pub(crate) const KIND_PEER: c_int = 3;
/// A store client's connection stopped answering while libtorch's client was setting up (the shim's
/// watchdog closed it after the timeout).
pub(crate) const KIND_STORE_STALLED: c_int = 4;
/// A store client's connection was closed by the store while libtorch's client was setting up.
pub(crate) const KIND_STORE_CLOSED: c_int = 5;

extern "C" {
    pub(crate) fn tch_rpo_dist_free_error(message: *mut c_char);
    pub(crate) fn tch_rpo_dist_nccl_compiled() -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tch_rpo_dist_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        agent_store: c_int,
        device_index: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
        kind: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn tch_rpo_dist_free(group: *mut c_void, failed: c_int);
    pub(crate) fn tch_rpo_dist_all_reduce(
        group: *mut c_void,
        tensor: *mut C_tensor,
        op: c_int,
        kind: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn tch_rpo_dist_broadcast(
        group: *mut c_void,
        tensor: *mut C_tensor,
        root: c_int,
        kind: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn tch_rpo_dist_barrier(group: *mut c_void, kind: *mut c_int) -> *mut c_char;
    pub(crate) fn tch_rpo_dist_unresponsive(
        group: *mut c_void,
        seq: i64,
        window_ms: i64,
        missing: *mut c_int,
        n_missing: *mut c_int,
        kind: *mut c_int,
    ) -> *mut c_char;
}

/// Takes ownership of a message returned by the shim.
///
/// # Safety
/// `message` is null or was returned by one of the functions above and not freed yet.
pub(crate) unsafe fn take_message(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    let text = std::ffi::CStr::from_ptr(message).to_string_lossy().into_owned();
    tch_rpo_dist_free_error(message);
    Some(text)
}
