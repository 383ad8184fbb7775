//! The data pipeline (feature `train`, on by default): preference records from JSON Lines
//! ([`record`]), tokenizers ([`tokenizer`]), truncation / padding / labels ([`collate`]), and a seeded,
//! resumable batch order ([`sampler`]).
//!
//! ```no_run
//! use tch_rpo::data::{encode_records, ByteTokenizer, CollateConfig, Collator, OnMalformed, PreferenceDataset, Tokenizer};
//! # fn main() -> tch_rpo::Result<()> {
//! let dataset = PreferenceDataset::from_jsonl("prefs.jsonl", OnMalformed::Error)?;
//! let tokenizer = ByteTokenizer::new();
//! let pairs = encode_records(&tokenizer, &dataset.records)?;
//! let collator = Collator::new(CollateConfig::new(tokenizer.pad_id()))?;
//! let batch = collator.collate(&[(0, &pairs[0]), (1, &pairs[1])], tch::Device::Cpu)?;
//! assert_eq!(batch.input_ids.size()[0], 4); // 2 chosen rows, then 2 rejected rows
//! # Ok(())
//! # }
//! ```

pub mod collate;
pub mod record;
pub mod sampler;
pub mod tokenizer;
pub mod word_reversal;

pub use collate::{CollateConfig, CollatedBatch, Collator};
pub use record::{Message, OnMalformed, PreferenceDataset, PreferenceRecord, SkippedRecord, Text};
pub use sampler::{BatchSampler, SamplerPosition};
pub use tokenizer::{encode_record, encode_records, ByteTokenizer, ChatTemplate, EncodedPair, Tokenizer};
#[cfg(feature = "hf-tokenizers")]
pub use tokenizer::{HfTokenizer, HfTokenizerConfig};
