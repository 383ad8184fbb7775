//! Chat templates (`tch_rpo::chat::JinjaTemplate`) against transformers' `apply_chat_template(...,
//! tokenize=False)`: Llama 3.2, Qwen2.5 and SmolLM2 read from GGUF files, Qwen3 from a `tokenizer_config.json`
//! (inline and as `chat_template.jinja`), and a template using Python methods, `tojson`, namespaces and loop
//! controls, on multi-turn conversations; conversational preference records tokenized as TRL does; a typed
//! error for every bad template or input. Fixtures: `scripts/make_bpe_fixture.py`.

mod bpe_support;

use bpe_support::{fixture, ids};
use serde_json::Value;
use tch_rpo::chat::{JinjaTemplate, SpecialTokens};
use tch_rpo::data::{encode_record, Message, PreferenceRecord, Text};
use tch_rpo::models::tokenizer::BpeTokenizer;
use tch_rpo::{DataError, Error};

fn messages(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().to_string(),
                m[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Renders every case of `renders` with `template` and compares with transformers' text.
fn check_renders(name: &str, template: &JinjaTemplate, renders: &Value) -> usize {
    let renders = renders.as_array().unwrap();
    for render in renders {
        let conversation = messages(&render["messages"]);
        let kwargs = render["kwargs"].as_object().unwrap();
        let text = template
            .render_with(
                conversation.iter().map(|(r, c)| (r.as_str(), c.as_str())),
                render["add_generation_prompt"].as_bool().unwrap(),
                kwargs,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            text,
            render["text"].as_str().unwrap(),
            "{name}: {conversation:?}, kwargs {kwargs:?}"
        );
    }
    renders.len()
}

#[test]
fn templates_render_as_transformers() {
    let fx = fixture("chat_template");
    let mut rendered = 0;
    for case in fx.expected["templates"].as_array().unwrap() {
        let (name, store) = (case["name"].as_str().unwrap(), case["store"].as_str().unwrap());
        let templates: Vec<JinjaTemplate> = if store == "qwen3-config" {
            ["qwen3-config", "qwen3-jinja"]
                .iter()
                .map(|folder| {
                    JinjaTemplate::from_tokenizer_config(fx.path(folder).join("tokenizer_config.json"))
                        .unwrap()
                })
                .collect()
        } else {
            let tokenizer = BpeTokenizer::from_gguf(&fx.gguf(store)).unwrap();
            vec![tokenizer.chat_template().unwrap().clone()]
        };
        for template in &templates {
            rendered += check_renders(name, template, &case["renders"]);
        }
    }
    assert!(rendered >= 60, "{rendered} renders");
    // The special tokens of the tokenizer_config.json: a string, `{"content": …}`, null.
    let qwen3 =
        JinjaTemplate::from_tokenizer_config(fx.path("qwen3-config").join("tokenizer_config.json")).unwrap();
    assert_eq!(
        qwen3.special_tokens(),
        &SpecialTokens {
            bos: None,
            eos: Some("<|im_end|>".into()),
            unk: None,
            pad: Some("<|endoftext|>".into()),
        }
    );
}

#[test]
fn python_methods_tojson_and_loop_controls_render_as_transformers() {
    let fx = fixture("chat_template");
    let case = &fx.expected["pycompat"];
    let special = SpecialTokens {
        bos: Some("<|begin_of_text|>".into()),
        eos: Some("<|eot_id|>".into()),
        ..SpecialTokens::default()
    };
    let template =
        JinjaTemplate::new(case["template"].as_str().unwrap(), "pycompat", special.clone()).unwrap();
    assert_eq!(check_renders("pycompat", &template, &case["renders"]), 2);

    // raise_exception fails the render with the template's message.
    let raising = JinjaTemplate::new(case["raising_template"].as_str().unwrap(), "raising", special).unwrap();
    assert_eq!(
        raising
            .render([("user", "a"), ("assistant", "b")], false)
            .unwrap(),
        "ab"
    );
    match raising.render([("user", "a"), ("tool", "grep")], false) {
        Err(Error::Data(DataError::ChatTemplate { origin, message })) => {
            assert_eq!(origin, "raising");
            assert!(message.contains("tools are not supported: grep"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn conversational_records_tokenize_as_trl() {
    let fx = fixture("chat_template");
    let record = &fx.expected["record"];
    let conversation = |key: &str| {
        Text::Conversation(
            messages(&record[key])
                .into_iter()
                .map(|(r, c)| Message::new(r, c))
                .collect(),
        )
    };
    let preference = PreferenceRecord::new(
        conversation("prompt"),
        conversation("chosen"),
        conversation("rejected"),
    )
    .unwrap();
    for (family, expected) in record["by_family"].as_object().unwrap() {
        let tokenizer = BpeTokenizer::from_gguf(&fx.gguf(family)).unwrap();
        let pair = encode_record(&tokenizer, &preference).unwrap();
        // Llama 3: the template writes <|begin_of_text|>, and the BOS the tokenizer adds is not doubled.
        assert_eq!(pair.prompt, ids(&expected["prompt_ids"]), "{family}");
        assert_eq!(pair.chosen, ids(&expected["chosen_ids"]), "{family}");
        assert_eq!(pair.rejected, ids(&expected["rejected_ids"]), "{family}");
    }
    let llama = BpeTokenizer::from_gguf(&fx.gguf("llama-bpe")).unwrap();
    assert!(llama.bos_id().is_some());
    // A tokenizer without a chat template refuses conversations (no silent fallback to another template).
    let gpt2 = BpeTokenizer::from_gguf(&fx.gguf("gpt-2")).unwrap();
    assert!(gpt2.chat_template().is_none());
    assert!(matches!(
        encode_record(&gpt2, &preference),
        Err(Error::Data(DataError::ChatTemplate { .. }))
    ));
    // ... until one is set.
    let mut gpt2 = gpt2;
    gpt2.set_chat_template(Some(llama.chat_template().unwrap().clone()));
    assert!(encode_record(&gpt2, &preference).is_ok());
}

fn chat_error<T: std::fmt::Debug>(result: tch_rpo::Result<T>) -> String {
    match result {
        Err(Error::Data(DataError::ChatTemplate { message, .. })) => message,
        other => panic!("expected DataError::ChatTemplate, got {other:?}"),
    }
}

#[test]
fn every_bad_template_or_input_is_a_typed_error() {
    let fx = fixture("chat_template");
    let none = SpecialTokens::default;
    // Does not compile.
    for source in ["{% for m in messages %}", "{{ messages[ }}", "{% endif %}"] {
        chat_error(JinjaTemplate::new(source, "bad", none()));
    }
    // Fails when rendering: an attribute of an undefined value, an unknown filter, an unsupported strftime
    // directive, bad tojson arguments.
    for source in [
        "{{ nothing.attribute }}",
        "{{ messages | no_such_filter }}",
        "{{ strftime_now('%Q') }}",
        "{{ messages | tojson(separators=(',',)) }}",
        "{{ messages | tojson(colour=1) }}",
        "{{ nothing | tojson }}",
    ] {
        let template = JinjaTemplate::new(source, "bad", none()).unwrap();
        chat_error(template.render([("user", "hi")], false));
    }
    // Extra variables cannot replace what the renderer sets.
    let template = JinjaTemplate::new("{{ messages | length }}", "ok", none()).unwrap();
    assert_eq!(template.render([("user", "hi")], false).unwrap(), "1");
    for reserved in ["messages", "tools", "documents", "add_generation_prompt"] {
        let extra: serde_json::Map<String, Value> =
            [(reserved.to_string(), Value::Null)].into_iter().collect();
        assert!(chat_error(template.render_with([("user", "hi")], false, &extra)).contains(reserved));
    }
    // tokenizer_config.json: missing file, invalid JSON, mistyped fields, no template.
    let dir = fx.path("bad-configs");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(
        JinjaTemplate::from_tokenizer_config(dir.join("absent.json")),
        Err(Error::Io { .. })
    ));
    for (i, (config, needle)) in [
        ("{", "invalid JSON"),
        (r#"{"chat_template": 3}"#, "`chat_template` must be"),
        (
            r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
            "named \"default\"",
        ),
        (r#"{"chat_template": "x", "eos_token": 1}"#, "`eos_token` must be"),
        (
            r#"{"chat_template": "x", "bos_token": {"text": "<s>"}}"#,
            "`bos_token` must be",
        ),
        (r#"{"eos_token": "</s>"}"#, "chat_template.jinja"),
        (r#"{"chat_template": "{% if %}"}"#, ""),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("tokenizer_config.json"), config).unwrap();
        let message = chat_error(JinjaTemplate::from_tokenizer_config(
            sub.join("tokenizer_config.json"),
        ));
        assert!(message.contains(needle), "{config}: {message}");
    }
    // A list of named templates picks "default".
    let sub = dir.join("named");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}], "bos_token": "<s>"}"#,
    )
    .unwrap();
    let named = JinjaTemplate::from_tokenizer_config(sub.join("tokenizer_config.json")).unwrap();
    assert_eq!(named.render([("user", "x")], false).unwrap(), "D<s>");
}
