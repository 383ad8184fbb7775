//! Collation: labels are the ignore index exactly on prompt and padding; truncation keeps what it should;
//! chosen rows first; conversational records through the chat template.
#![cfg(feature = "train")]

use tch::{Device, Tensor};
use tch_rpo::data::{
    encode_record, ByteTokenizer, ChatTemplate, CollateConfig, Collator, EncodedPair, Message,
    PreferenceRecord, Text, Tokenizer,
};

const IGNORE: i64 = -100;
const PAD: i64 = 0;

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let size = t.size();
    let flat = Vec::<i64>::try_from(&t.flatten(0, -1)).unwrap();
    flat.chunks(size[1] as usize).map(<[i64]>::to_vec).collect()
}

fn pair(
    prompt: std::ops::Range<i64>,
    chosen: std::ops::Range<i64>,
    rejected: std::ops::Range<i64>,
) -> EncodedPair {
    EncodedPair {
        prompt: prompt.collect(),
        chosen: chosen.collect(),
        rejected: rejected.collect(),
    }
}

#[test]
fn labels_ignore_exactly_prompt_and_padding() {
    let collator = Collator::new(CollateConfig::new(PAD)).unwrap();
    let pairs = [pair(1..4, 10..15, 20..22), pair(30..31, 40..42, 50..57)];
    let batch = collator
        .collate(&[(7, &pairs[0]), (3, &pairs[1])], Device::Cpu)
        .unwrap();
    assert_eq!(batch.indices, vec![7, 3]);
    assert_eq!(batch.input_ids.size(), vec![4, 8]); // longest row: 1 + 7
    let ids = rows(&batch.input_ids);
    let labels = rows(&batch.labels);
    let mask = rows(&batch.attention_mask);
    // rows: chosen 0, chosen 1, rejected 0, rejected 1
    let expected: [(&[i64], &[i64]); 4] = [
        (&pairs[0].prompt, &pairs[0].chosen),
        (&pairs[1].prompt, &pairs[1].chosen),
        (&pairs[0].prompt, &pairs[0].rejected),
        (&pairs[1].prompt, &pairs[1].rejected),
    ];
    for (r, (prompt, response)) in expected.iter().enumerate() {
        let len = prompt.len() + response.len();
        for t in 0..8 {
            let (id, label, m) = (ids[r][t], labels[r][t], mask[r][t]);
            if t < prompt.len() {
                assert_eq!((id, label, m), (prompt[t], IGNORE, 1), "row {r} pos {t} (prompt)");
            } else if t < len {
                let token = response[t - prompt.len()];
                assert_eq!((id, label, m), (token, token, 1), "row {r} pos {t} (response)");
            } else {
                assert_eq!((id, label, m), (PAD, IGNORE, 0), "row {r} pos {t} (padding)");
            }
        }
    }
    // scored chosen and rejected tokens under the causal shift, counted from the labels here, and all
    // real tokens
    let scored = |rows: std::ops::Range<usize>| -> i64 {
        rows.map(|r| (1..8).filter(|&t| labels[r][t] != IGNORE).count() as i64)
            .sum()
    };
    assert_eq!(batch.chosen_tokens, 5 + 2);
    assert_eq!(batch.chosen_tokens, scored(0..2));
    assert_eq!(batch.rejected_tokens, 2 + 7);
    assert_eq!(batch.rejected_tokens, scored(2..4));
    assert_eq!(batch.tokens, (3 + 5) + (1 + 2) + (3 + 2) + (1 + 7));
}

#[test]
fn truncation_keeps_prompt_end_and_response_start() {
    let config = CollateConfig::new(PAD).with_limits(10, 4);
    let collator = Collator::new(config).unwrap();
    let long = pair(100..110, 200..212, 300..303);
    let (prompt, chosen, rejected) = collator.truncate(&long);
    assert_eq!(prompt, &[106, 107, 108, 109]); // last 4 prompt tokens
    assert_eq!(chosen, &[200, 201, 202, 203, 204, 205]); // first 10 - 4 response tokens
    assert_eq!(rejected, &[300, 301, 302]); // short enough: untouched
                                            // a short prompt leaves more room for the response
    let short = pair(1..3, 200..212, 300..301);
    let (prompt, chosen, _) = collator.truncate(&short);
    assert_eq!(prompt, &[1, 2]);
    assert_eq!(chosen.len(), 8);
    let batch = collator.collate(&[(0, &long)], Device::Cpu).unwrap();
    assert_eq!(batch.input_ids.size(), vec![2, 10]);
    assert_eq!(
        rows(&batch.labels)[0],
        vec![IGNORE, IGNORE, IGNORE, IGNORE, 200, 201, 202, 203, 204, 205]
    );
    // the paper's defaults
    let defaults = CollateConfig::new(PAD);
    assert_eq!(
        (
            defaults.max_length,
            defaults.max_prompt_length,
            defaults.ignore_index
        ),
        (1024, 512, -100)
    );
    let big = pair(0..600, 1000..2000, 1..2);
    let (p, c, _) = Collator::new(defaults).unwrap().truncate(&big);
    assert_eq!((p.len(), p[0], c.len(), c[0]), (512, 88, 512, 1000));
}

#[test]
fn inconsistent_limits_are_refused() {
    assert!(Collator::new(CollateConfig::new(PAD).with_limits(8, 8)).is_err());
    assert!(Collator::new(CollateConfig::new(PAD).with_limits(0, 0)).is_err());
    let collator = Collator::new(CollateConfig::new(PAD)).unwrap();
    assert!(collator.collate(&[], Device::Cpu).is_err());
}

#[test]
fn plain_records_get_bos_and_eos() {
    let tokenizer = ByteTokenizer::new();
    let record = PreferenceRecord::new(
        Text::Plain("Hi".into()),
        Text::Plain("ok".into()),
        Text::Plain("no!".into()),
    )
    .unwrap();
    let pair = encode_record(&tokenizer, &record).unwrap();
    assert_eq!(pair.prompt, vec![ByteTokenizer::BOS, 72, 105]);
    assert_eq!(pair.chosen, vec![111, 107, ByteTokenizer::EOS]);
    assert_eq!(pair.rejected, vec![110, 111, 33, ByteTokenizer::EOS]);
}

#[test]
fn conversations_split_at_the_generation_prompt() {
    let user = Message::new("user", "2+2?");
    let record = PreferenceRecord::new(
        Text::Conversation(vec![Message::new("system", "Be brief."), user]),
        Text::Conversation(vec![Message::new("assistant", "4")]),
        Text::Conversation(vec![Message::new("assistant", "5")]),
    )
    .unwrap();
    let chatml = ByteTokenizer::new();
    let pair = encode_record(&chatml, &record).unwrap();
    assert_eq!(
        chatml.decode(&pair.prompt),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(chatml.decode(&pair.chosen), "4<|im_end|>\n");
    assert_eq!(*pair.chosen.last().unwrap(), ByteTokenizer::EOS);
    let gemma = ByteTokenizer {
        template: ChatTemplate::Gemma,
    };
    assert_eq!(gemma.chat_template(), ChatTemplate::Gemma);
    let pair = encode_record(&gemma, &record).unwrap();
    assert_eq!(
        gemma.decode(&pair.prompt),
        "<start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(gemma.decode(&pair.rejected), "5<end_of_turn>\n");
}
