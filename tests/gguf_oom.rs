//! A valid GGUF file whose tensor does not fit in memory gives `Error::OutOfMemory` (or libtorch's
//! allocation error for `GgufFile::tensor`), not an aborted process.
//!
//! The file is real and valid: a header declaring one F32 tensor of 2^31 values (8 GiB), followed by 8 GiB
//! of data, written sparse (`File::set_len`, no disk space used). The reads run in a child process (this
//! test binary again, running only `child_reads_under_memory_limit`) under `ulimit -v`: the parent's own
//! virtual size plus 2 GiB, so libtorch loads but no 8 GiB (nor 4 GiB bf16) buffer fits. An allocation
//! that aborted would kill the child with SIGABRT ("memory allocation of … bytes failed").
#![cfg(all(feature = "gguf", target_os = "linux"))]

use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind};
use tch_rpo::gguf::GgufFile;
use tch_rpo::Error;

const CHILD_ENV: &str = "TCH_RPO_GGUF_OOM_FILE";
const ELEMENTS: u64 = 1 << 31;

/// A GGUF v3 file: no metadata, one F32 tensor `huge` of `ELEMENTS` values at offset 0 (GGUF spec layout,
/// written here independently of the reader).
fn write_huge_gguf() -> PathBuf {
    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(3u32.to_le_bytes()); // version
    header.extend(1u64.to_le_bytes()); // tensor count
    header.extend(0u64.to_le_bytes()); // metadata count
    let name = b"huge";
    header.extend((name.len() as u64).to_le_bytes());
    header.extend(name);
    header.extend(1u32.to_le_bytes()); // dimensions
    header.extend(ELEMENTS.to_le_bytes()); // ne[0]
    header.extend(0u32.to_le_bytes()); // ggml type F32
    header.extend(0u64.to_le_bytes()); // data offset
    let data_start = header.len().div_ceil(32) * 32; // default alignment 32
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf_oom_huge.gguf");
    let file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    (&file).write_all(&header).unwrap();
    file.set_len(data_start as u64 + 4 * ELEMENTS).unwrap();
    path
}

/// The `VmSize` of this process in KiB.
fn own_virtual_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn huge_tensor_under_memory_limit_is_an_error_not_an_abort() {
    let path = write_huge_gguf();
    // Opening reads only the header: no limit needed, and the tensor is valid.
    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor_info("huge").unwrap();
    assert_eq!((info.n_elements, info.n_bytes), (ELEMENTS, 4 * ELEMENTS));

    let limit_kib = own_virtual_kib() + (2 << 20);
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {limit_kib} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args([
            "child_reads_under_memory_limit",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::remove_file(&path).ok();
    assert!(
        output.status.success(),
        "the child ({}) failed under ulimit -v {limit_kib}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    // The child really ran the reads (and not zero tests).
    assert!(
        stdout.contains("checked 4 reads"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Runs only as the child of the test above (does nothing otherwise).
#[test]
fn child_reads_under_memory_limit() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let file = GgufFile::open(PathBuf::from(path)).unwrap();
    let expect_oom = |result: tch_rpo::Result<()>, bytes: u64, what: &str| match result {
        Err(Error::OutOfMemory {
            bytes: got,
            what: message,
        }) => {
            assert_eq!(got, bytes, "{what}");
            assert!(message.contains("`huge`"), "{what}: {message}");
        }
        other => panic!("{what}: expected Error::OutOfMemory, got {other:?}"),
    };
    expect_oom(file.tensor_bytes("huge").map(drop), 4 * ELEMENTS, "tensor_bytes");
    expect_oom(file.tensor_f32("huge").map(drop), 4 * ELEMENTS, "tensor_f32");
    // GgufFile::tensor allocates its output through libtorch (fallible `f_empty`): libtorch's error.
    for kind in [Kind::Float, Kind::BFloat16] {
        match file.tensor("huge", kind, Device::Cpu) {
            Err(Error::Torch(e)) => {
                let message = e.to_string();
                assert!(message.contains("allocate"), "tensor({kind:?}): {message}");
            }
            other => panic!(
                "tensor({kind:?}): expected Error::Torch, got {:?}",
                other.map(|t| t.size())
            ),
        }
    }
    println!("checked 4 reads");
}
