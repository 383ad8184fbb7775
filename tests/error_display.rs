//! `Error::Torch` shows libtorch's message without the C++ backtrace libtorch appends; the whole text stays
//! reachable (`Error::torch_details`, `source()`, `Debug`).

use std::error::Error as _;
use tch::{Device, Kind, Tensor};
#[cfg(feature = "dist")]
use tch_rpo::DistError;
use tch_rpo::Error;
use tch_rpo::{InputError, WeightsError};

/// A real libtorch error: viewing 6 values as 5.
fn torch_error() -> Error {
    let t = Tensor::f_zeros([2, 3], (Kind::Float, Device::Cpu)).unwrap();
    Error::from(t.f_view([5]).unwrap_err())
}

#[test]
fn torch_error_display_drops_the_backtrace() {
    let error = torch_error();
    let full = error.torch_details().expect("an Error::Torch");
    // libtorch's own text carries the C++ backtrace ...
    assert!(full.contains("Exception raised from"), "{full}");
    assert!(
        full.contains("shape '[5]' is invalid for input of size 6"),
        "{full}"
    );
    // ... Display keeps the message only.
    let shown = error.to_string();
    assert_eq!(shown, "libtorch: shape '[5]' is invalid for input of size 6");
    assert!(
        shown.len() * 4 < full.len(),
        "{} vs {} bytes",
        shown.len(),
        full.len()
    );
    // The whole text is reachable through the source error and Debug.
    let source = error.source().expect("the TchError");
    assert_eq!(source.to_string(), full);
    assert!(format!("{error:?}").contains("Exception raised from"));
}

#[test]
fn other_errors_have_no_torch_details() {
    let error = Error::Input(InputError::EmptyBatch {
        arg: "chosen",
        shape: vec![0, 4],
    });
    assert_eq!(error.torch_details(), None);
    // A TchError without a backtrace displays unchanged.
    let error = Error::from(tch::TchError::Kind("not a float".into()));
    assert_eq!(error.to_string(), "libtorch: tensor kind error: not a float");
}

/// Parameter values print readably: an extreme magnitude in scientific notation instead of hundreds of
/// digits (before: β = 1e-300 printed as `0.000…0001` with 300 zeros), ordinary ones as written.
#[test]
fn parameter_values_print_readably() {
    use tch_rpo::{DpoConfig, DpoLoss};
    let tiny_beta = DpoConfig::new(DpoLoss::Ipo, 1e-300).validate().unwrap_err();
    let text = tiny_beta.to_string();
    assert!(text.starts_with("`beta` = 1e-300 is invalid"), "{text}");
    assert!(text.len() < 200, "{} characters: {text}", text.len());
    for (value, shown) in [
        (0.1, "0.1"),
        (1000.0, "1000"),
        (0.0, "0"),
        (-2.5, "-2.5"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (1e-5, "1e-5"),
        (2.5e20, "2.5e20"),
        (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
    ] {
        let error = Error::Input(InputError::InvalidParameter {
            name: "x",
            value: value.into(),
            requirement: "r",
        });
        assert_eq!(error.to_string(), format!("`x` = {shown} is invalid: r"));
    }
}

/// `DistError::Store` says, in words, what the peer at the store's address did, with the rank, the address
/// and the timeout; an empty detail adds nothing.
#[cfg(feature = "dist")]
#[test]
fn dist_store_errors_say_what_the_peer_did() {
    use tch_rpo::DistStorePeer;
    let error = Error::Dist(DistError::Store {
        rank: 1,
        world_size: 2,
        addr: "10.0.0.7:29500".into(),
        timeout_ms: 2000,
        peer: DistStorePeer::OtherProtocol,
        detail: "its first bytes: \"HTTP/1.1 400\"".into(),
    });
    assert_eq!(
        error.to_string(),
        "rank 1 of 2: the rendezvous store at 10.0.0.7:29500 answered in another protocol, not c10d's \
         TCPStore (is MASTER_PORT another service's port?) (timeout 2000 ms): its first bytes: \"HTTP/1.1 400\""
    );
    for (peer, words) in [
        (DistStorePeer::Unreachable, "could not be reached"),
        (
            DistStorePeer::NeverAnswered,
            "accepted the connection but never answered",
        ),
        (DistStorePeer::OtherProtocol, "another protocol"),
        (DistStorePeer::Closed, "closed the connection without answering"),
        (
            DistStorePeer::StoppedAnswering,
            "answered, then stopped answering",
        ),
    ] {
        let error = Error::Dist(DistError::Store {
            rank: 3,
            world_size: 4,
            addr: "[::1]:1234".into(),
            timeout_ms: 500,
            peer,
            detail: String::new(),
        });
        let shown = error.to_string();
        assert!(
            shown.starts_with("rank 3 of 4: the rendezvous store at [::1]:1234 "),
            "{shown}"
        );
        assert!(shown.contains(words), "{shown}");
        assert!(shown.ends_with("(timeout 500 ms)"), "{shown}");
    }
}

/// A parameter whose problem is not a number carries its value as written, not a made-up `0.0`: counts
/// in decimal, descriptions as given.
#[test]
fn parameter_values_that_are_no_numbers() {
    use tch_rpo::ParamValue;
    for (value, shown) in [
        (ParamValue::Count(0), "0"),
        (ParamValue::from(12_usize), "12"),
        (ParamValue::from("[]"), "[]"),
        (ParamValue::Text("an empty list".into()), "an empty list"),
    ] {
        let error = Error::Input(InputError::InvalidParameter {
            name: "x",
            value,
            requirement: "r",
        });
        assert_eq!(error.to_string(), format!("`x` = {shown} is invalid: r"));
    }
    // From the crate: an empty list of losses and a zero count, each with the value the caller gave.
    let empty = tch_rpo::DpoConfig::new(tch_rpo::DpoLoss::Sigmoid, 0.1)
        .with_losses(Vec::new())
        .validate()
        .unwrap_err();
    assert!(
        matches!(&empty, Error::Input(InputError::InvalidParameter { name: "losses", value: ParamValue::Text(text), .. }) if text == "[]"),
        "{empty:?}"
    );
    assert!(
        empty.to_string().starts_with("`losses` = [] is invalid"),
        "{empty}"
    );
}

/// The internal-invariant variant says it is a bug in tch-rpo, not the caller's input.
#[test]
fn internal_errors_say_they_are_bugs() {
    let error = Error::Internal {
        what: "the loss output has no metric `rewards/chosen` of the schema".into(),
    };
    assert_eq!(
        error.to_string(),
        "internal error (a bug in tch-rpo, please report): the loss output has no metric `rewards/chosen` of \
         the schema"
    );
}

/// One parameter-set error lists every kind of mismatch, the first few names of each and how many more.
#[test]
fn parameter_set_errors_list_every_mismatch() {
    use tch_rpo::{ParameterMismatch, ShapeMismatch};
    let error = Error::Weights(WeightsError::Parameters {
        origin: "weights/model.safetensors".into(),
        expected_by: "the gemma config".into(),
        mismatch: Box::new(ParameterMismatch {
            missing: vec!["a.weight".into(), "b.weight".into()],
            unexpected: vec!["c.weight".into()],
            mismatched: vec![ShapeMismatch {
                name: "d.weight".into(),
                expected: vec![3, 2],
                got: vec![2, 3],
            }],
            duplicated: vec!["e.weight".into()],
        }),
    });
    assert_eq!(
        error.to_string(),
        "weights/model.safetensors does not match the gemma config: missing `a.weight`, `b.weight`; \
         unexpected `c.weight` (not parameters of this model: wrong architecture or config?); `d.weight` has \
         shape [2, 3], expected [3, 2]; given twice `e.weight`"
    );
    let many = ParameterMismatch {
        missing: (0..11).map(|i| format!("p{i}")).collect(),
        ..ParameterMismatch::default()
    };
    let text = many.to_string();
    assert!(text.starts_with("missing `p0`, `p1`"), "{text}");
    assert!(
        text.ends_with(&format!("`p{}` and 3 more", ParameterMismatch::SHOWN - 1)),
        "{text}"
    );
}
