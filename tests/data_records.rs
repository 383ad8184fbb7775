//! JSON Lines records: both formats, and malformed records reported with file:line or skipped and counted.
#![cfg(feature = "train")]

use std::io::Cursor;
use tch_rpo::data::{BatchSampler, Message, OnMalformed, PreferenceDataset, SamplerPosition, Text};
use tch_rpo::DataError;
use tch_rpo::Error;

fn read(text: &str, mode: OnMalformed) -> tch_rpo::Result<PreferenceDataset> {
    PreferenceDataset::from_reader(Cursor::new(text.as_bytes().to_vec()), "prefs.jsonl", mode)
}

const GOOD: &str = r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#;

#[test]
fn both_formats_parse() {
    let text = format!(
        "{GOOD}\n\n{}\n{}\n",
        r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [{"role": "assistant", "content": "go away"}], "score": 3}"#,
        // implicit prompt: the shared leading messages
        r#"{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}"#
    );
    let data = read(&text, OnMalformed::Error).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.lines, vec![1, 3, 4]); // the blank line 2 holds no record
    assert_eq!(data.records[0].chosen, Text::Plain("c".into()));
    assert_eq!(
        data.records[1].prompt,
        Text::Conversation(vec![Message::new("user", "hi")])
    );
    assert_eq!(
        data.records[2].prompt,
        Text::Conversation(vec![Message::new("user", "q")])
    );
    assert_eq!(
        data.records[2].rejected,
        Text::Conversation(vec![Message::new("assistant", "b")])
    );
}

#[test]
fn malformed_records_report_file_and_line() {
    let cases = [
        (r#"{"prompt": "p", "chosen": "c", "rejected": "#, "invalid JSON"),
        (r#"{"prompt": "p", "chosen": "c"}"#, "missing field `rejected`"),
        (r#"{"chosen": "c", "rejected": "r"}"#, "missing field `prompt`"),
        (
            r#"{"prompt": "p", "chosen": "  ", "rejected": "r"}"#,
            "`chosen` is an empty response",
        ),
        (
            r#"{"prompt": "p", "chosen": "c", "rejected": ""}"#,
            "`rejected` is an empty response",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": []}"#,
            "`rejected` is an empty response",
        ),
        (
            r#"{"prompt": "p", "chosen": 3, "rejected": "r"}"#,
            "`chosen` must be a string",
        ),
        (
            r#"{"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "r"}"#,
            "`chosen[0]` needs a string `content`",
        ),
        (
            r#"{"prompt": "p", "chosen": [{"role": "a", "content": "x"}], "rejected": [{"role": "a", "content": "y"}]}"#,
            "both be strings",
        ),
        (r#"["p", "c", "r"]"#, "expected a JSON object"),
    ];
    for (bad, needle) in cases {
        let text = format!("{GOOD}\n{GOOD}\n{bad}\n{GOOD}\n");
        match read(&text, OnMalformed::Error) {
            Err(err @ Error::Data(DataError::Record { .. })) => {
                let message = err.to_string();
                assert!(message.starts_with("prefs.jsonl:3: "), "{message}");
                assert!(message.contains(needle), "{message} should mention {needle}");
            }
            other => panic!("{bad}: expected a data error, got {other:?}"),
        }
        let skipped = read(&text, OnMalformed::Skip).unwrap();
        assert_eq!(skipped.len(), 3);
        assert_eq!(skipped.lines, vec![1, 2, 4]);
        assert_eq!(skipped.skipped.len(), 1);
        assert_eq!(skipped.skipped[0].line, 3);
        assert!(skipped.skipped[0].reason.contains(needle));
    }
}

#[test]
fn invalid_utf8_and_missing_files_are_errors() {
    let mut bytes = format!("{GOOD}\n").into_bytes();
    bytes.extend_from_slice(b"{\"prompt\": \"\xff\"}\n");
    let err = PreferenceDataset::from_reader(Cursor::new(bytes.clone()), "x.jsonl", OnMalformed::Error)
        .unwrap_err();
    assert!(err.to_string().starts_with("x.jsonl:2: "), "{err}");
    let data = PreferenceDataset::from_reader(Cursor::new(bytes), "x.jsonl", OnMalformed::Skip).unwrap();
    assert_eq!((data.len(), data.skipped.len()), (1, 1));
    let missing = PreferenceDataset::from_jsonl("/nonexistent/prefs.jsonl", OnMalformed::Error).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}

#[test]
fn sampler_order_is_seeded_complete_and_resumable() {
    let mut a = BatchSampler::new(10, 3, 42, true).unwrap();
    let epoch0: Vec<Vec<usize>> = (0..4).map(|_| a.next_batch()).collect();
    assert_eq!(epoch0.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
    let mut seen: Vec<usize> = epoch0.concat();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_ne!(epoch0.concat(), (0..10).collect::<Vec<_>>(), "shuffled");
    let next = a.next_batch();
    assert_eq!(a.position(), SamplerPosition { epoch: 1, cursor: 3 });
    assert_ne!(a.epoch_order(1), a.epoch_order(0));
    // same seed, same order; restored position, same continuation
    let mut b = BatchSampler::new(10, 3, 42, true).unwrap();
    assert_eq!((0..4).map(|_| b.next_batch()).collect::<Vec<_>>(), epoch0);
    let mut c = BatchSampler::new(10, 3, 42, true).unwrap();
    c.set_position(SamplerPosition { epoch: 1, cursor: 0 }).unwrap();
    assert_eq!(c.next_batch(), next);
    assert_eq!(a.next_batch(), c.next_batch());
    assert_ne!(
        BatchSampler::new(10, 3, 43, true).unwrap().epoch_order(0),
        a.epoch_order(0)
    );
    assert_eq!(
        BatchSampler::new(4, 3, 42, false).unwrap().next_batch(),
        vec![0, 1, 2]
    );
    assert!(BatchSampler::new(0, 3, 42, true).is_err());
}
