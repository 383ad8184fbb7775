//! Inspects a GGUF file with `tch_rpo::gguf`: metadata, tensor types, the time to dequantize every tensor,
//! and (with `--expected REF.gguf` from `scripts/gguf_reference.py`) a bit-for-bit comparison with the `gguf`
//! Python package's dequantization.
//!
//! ```text
//! cargo run --release --example gguf_inspect -- MODEL.gguf [--expected REF.gguf] [--kind f32|bf16]
//! ```
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::{GgufFile, GgufValue};

fn describe(value: &GgufValue) -> String {
    match value {
        GgufValue::String(s) if s.chars().count() > 60 => {
            format!("{:?}…", s.chars().take(60).collect::<String>())
        }
        GgufValue::String(s) => format!("{s:?}"),
        GgufValue::Array { elem, values } => {
            let head: Vec<String> = values.iter().take(3).map(describe).collect();
            format!(
                "[{elem}; {}] [{}{}]",
                values.len(),
                head.join(", "),
                if values.len() > 3 { ", …" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

fn main() -> tch_rpo::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: gguf_inspect MODEL.gguf [--expected REF.gguf] [--kind f32|bf16]");
        std::process::exit(2);
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let kind = match flag("--kind").as_deref() {
        Some("bf16") => Kind::BFloat16,
        _ => Kind::Float,
    };

    let start = Instant::now();
    let file = GgufFile::open(path)?;
    println!(
        "{path}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {} (header read in {:.1} ms)",
        file.version(),
        file.metadata().len(),
        file.tensors().len(),
        file.alignment(),
        file.data_offset(),
        start.elapsed().as_secs_f64() * 1e3
    );
    for (key, value) in file.metadata() {
        println!("  {key} = {}", describe(value));
    }
    let mut by_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for info in file.tensors() {
        let entry = by_type.entry(info.ggml_type.name()).or_default();
        *entry = (entry.0 + 1, entry.1 + info.n_elements, entry.2 + info.n_bytes);
    }
    for (ty, (count, elements, bytes)) in &by_type {
        println!("  {ty}: {count} tensors, {elements} values, {bytes} bytes");
    }

    if let Some(reference) = flag("--expected") {
        let reference = GgufFile::open(reference)?;
        for info in reference.tensors() {
            let expected = reference.tensor_f32(&info.name)?;
            let (name, rows) = match info.name.strip_suffix(".rows4096") {
                Some(base) => (base, Some(4096)),
                None => (info.name.as_str(), None),
            };
            let mut got = file.tensor(name, Kind::Float, Device::Cpu)?;
            if let Some(rows) = rows {
                got = got.narrow(0, 0, rows);
            }
            let got = Vec::<f32>::try_from(got.flatten(0, -1))?;
            let mismatches = got
                .iter()
                .zip(&expected)
                .filter(|(g, e)| g.to_bits() != e.to_bits())
                .count();
            println!(
                "compare {} ({}): {} values, {} differ from gguf-py",
                info.name,
                file.tensor_info(name)?.ggml_type,
                expected.len(),
                mismatches
            );
            assert_eq!(got.len(), expected.len());
        }
    }

    let mut per_type: BTreeMap<&str, f64> = BTreeMap::new();
    let start = Instant::now();
    let mut total = 0i64;
    for info in file.tensors() {
        let t0 = Instant::now();
        let t: Tensor = file.tensor(&info.name, kind, Device::Cpu)?;
        *per_type.entry(info.ggml_type.name()).or_default() += t0.elapsed().as_secs_f64();
        total += t.numel() as i64;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "dequantized all {} tensors ({total} values) to {kind:?} on the CPU in {seconds:.2} s ({:.0} M values/s)",
        file.tensors().len(),
        total as f64 / seconds / 1e6
    );
    for (ty, s) in per_type {
        println!("  {ty}: {s:.2} s");
    }
    Ok(())
}
