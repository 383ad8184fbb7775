//! What every family's writers share: [`TokenizerSource`], the Hugging Face folder writer
//! (`write_hf_folder`), the llama.cpp GGUF writer (`GgufExport`) and the conversion of a byte-level BPE
//! tokenizer between the two ([`hf_bpe_to_gguf`], [`gguf_bpe_to_hf`]). The families
//! ([`gemma::export`](crate::models::gemma::export), [`llama::export`](crate::models::llama::export)) only
//! say what is theirs: the `config.json` fields, the GGUF architecture and hyper-parameter keys, the GGUF
//! tensor names and how a tensor is stored (Gemma's `1 + w` norms, the Llama q / k row permutation).

mod bpe;
mod gguf;
mod hf;

pub use bpe::{gguf_bpe_to_hf, hf_bpe_to_gguf};

pub(crate) use gguf::{check_export_type, u32_value, GgufExport};
pub(crate) use hf::{generation_config_json, write_hf_folder};

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, InputError, Result};
use crate::gguf::GgufFile;
use crate::validate::finite_weight;

/// Where the saved tokenizer comes from.
#[derive(Debug, Clone, Copy)]
pub enum TokenizerSource<'a> {
    /// No tokenizer: the folder gets no tokenizer files, the GGUF no `tokenizer.*` metadata (llama.cpp then
    /// cannot run it; transformers' `AutoTokenizer` cannot load it).
    None,
    /// The tokenizer metadata of a GGUF file (e.g. the one the model was loaded from): copied into a GGUF
    /// export; for a folder, turned into `tokenizer.json` / `tokenizer_config.json` (Gemma's SentencePiece
    /// vocabularies; the Llama family's byte-level BPE, [`gguf_bpe_to_hf`]).
    Gguf(&'a GgufFile),
    /// A Hugging Face folder (e.g. the one the model was loaded from): its tokenizer files
    /// ([`HF_TOKENIZER_FILES`]) are copied into a folder export; a GGUF export of the Llama family converts
    /// its byte-level BPE `tokenizer.json` ([`hf_bpe_to_gguf`]; Gemma's writers refuse it).
    HfDir(&'a Path),
}

/// The files [`TokenizerSource::HfDir`] copies when present.
pub const HF_TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// How the writers' errors name the parameters they were given.
pub(crate) const SAVED: &str = "the parameters to save";

/// Refuses parameters that hold NaN or ±inf, in every export format (GGUF F32, F16, BF16, Q8_0; a Hugging
/// Face folder in any dtype): [`WeightsError::NonFinite`](crate::WeightsError::NonFinite) naming the first
/// such parameter, before anything is written. One `isfinite().all()` per parameter on its device.
pub(crate) fn check_finite(ordered: &[(&str, &Tensor)]) -> Result<()> {
    for (name, tensor) in ordered {
        finite_weight(tensor, name, SAVED)?;
    }
    Ok(())
}

/// Maps a `kind` to the safetensors / transformers dtype name, for the kinds a folder can be saved in.
pub(crate) fn dtype_name(kind: Kind) -> Result<&'static str> {
    match kind {
        Kind::Float => Ok("float32"),
        Kind::BFloat16 => Ok("bfloat16"),
        Kind::Half => Ok("float16"),
        other => Err(Error::Input(InputError::DType {
            arg: "kind",
            expected: "Float, BFloat16 or Half",
            got: other,
        })),
    }
}
