//! llama.cpp's SentencePiece (`LLAMA_VOCAB_TYPE_SPM`) tokenization of the Llama family's GGUF files
//! (Llama 2, Mistral 7B, TinyLlama, …), used by [`GgufTokenizer`](super::GgufTokenizer) for files that are
//! not Gemma's (see [`SpmStyle`](super::gguf::SpmStyle)). Written from the description of llama.cpp's
//! `src/llama-vocab.cpp` (`tokenizer_st_partition`, `tokenize` for SPM, `llm_tokenizer_spm_session`):
//! - **special tokens** (types control, user-defined and unknown; longest first, each one splitting every
//!   text fragment left to right at each of its occurrences) are cut out of the raw text first;
//! - each text fragment gets a leading space when `add_space_prefix` is set and the fragment starts the
//!   text or follows a special token; spaces become `▁`;
//! - the fragment is split into UTF-8 characters, and the adjacent pair whose concatenation is a
//!   vocabulary token with the **highest score** is merged (the leftmost among equal scores) until no pair
//!   is a token;
//! - each final piece is its token, or its bytes as `<0xXX>` byte tokens (byte fallback), else as the
//!   one-byte token of an ASCII byte, else `<unk>` (where llama.cpp stops with an error).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// A piece of the text being tokenized: bytes `start .. start + len`, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `right` (adjacent when proposed) into a token of `score`;
/// `size` is the byte length of the merged text, which detects stale candidates.
#[derive(Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// What the merging needs of the vocabulary.
pub(crate) struct SpmVocab<'v> {
    /// Token text (as the file spells it) → id.
    pub vocab: &'v HashMap<String, u32>,
    /// Token scores, by id.
    pub scores: &'v [f32],
    /// The token of each byte: `<0xXX>`, else the one-byte token of an ASCII byte.
    pub byte_ids: &'v [Option<u32>],
    /// `<unk>`, for a byte without a token.
    pub unk: Option<u32>,
}

impl SpmVocab<'_> {
    /// Appends the ids of `text` (already escaped: spaces as `▁`) to `out`.
    pub fn tokenize(&self, text: &str, out: &mut Vec<i64>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = None;
        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() {
            self.propose(&symbols, text, right - 1, right, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.left].next = r.next;
            symbols[b.right].len = 0;
            if let Some(next) = r.next {
                symbols[next].prev = Some(b.left);
            }
            if let Some(prev) = symbols[b.left].prev {
                self.propose(&symbols, text, prev, b.left, &mut queue);
            }
            if let Some(next) = symbols[b.left].next {
                self.propose(&symbols, text, b.left, next, &mut queue);
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.vocab.get(piece) {
                Some(&id) => out.push(i64::from(id)),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                            out.push(i64::from(id));
                        }
                    }
                }
            }
            at = s.next;
        }
    }

    /// Queues the merge of `left` and `right` when their concatenation is a token.
    fn propose(
        &self,
        symbols: &[Symbol],
        text: &str,
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let start = symbols[left].start;
        let size = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.vocab.get(&text[start..start + size]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }
}

/// A part of the raw text: plain text, or a special token written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    /// Text to tokenize.
    Text(&'t str),
    /// The id of a special token.
    Token(u32),
}

/// Splits `text` at the special tokens `specials` (`(text, id)`, longest first): each one in turn cuts
/// every remaining text fragment at each of its occurrences, left to right, as llama.cpp's
/// `tokenizer_st_partition` does.
pub(crate) fn partition<'t>(text: &'t str, specials: &[(String, u32)]) -> Vec<Fragment<'t>> {
    let mut fragments = if text.is_empty() {
        Vec::new()
    } else {
        vec![Fragment::Text(text)]
    };
    for (special, id) in specials {
        if !fragments
            .iter()
            .any(|f| matches!(f, Fragment::Text(t) if t.contains(special.as_str())))
        {
            continue;
        }
        let mut split = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            let Fragment::Text(t) = fragment else {
                split.push(fragment);
                continue;
            };
            let mut rest = 0;
            for (at, _) in t.match_indices(special.as_str()) {
                if at > rest {
                    split.push(Fragment::Text(&t[rest..at]));
                }
                split.push(Fragment::Token(*id));
                rest = at + special.len();
            }
            if rest < t.len() {
                split.push(Fragment::Text(&t[rest..]));
            }
        }
        fragments = split;
    }
    fragments
}
