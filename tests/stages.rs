//! `train::stages`: a stage's rows equal an independent trainer's evaluations at the same steps, the
//! trained model equals that trainer's, the hooks see every run of steps; the metrics CSV's exact text.
mod train_support;

use std::cell::RefCell;

use tch_rpo::data::{ByteTokenizer, CollateConfig, Collator};
use tch_rpo::train::{
    metrics_csv, write_metrics_csv, Collective, EvalRow, PolicyModel, ReferenceSource, RpoTrainer,
    RpoTrainerConfig, StageHooks, StageSummary, Stages, TrainedSteps, METRICS_CSV_HEADER,
};
use tch_rpo::{Error, InputError, RpoConfig};
use train_support::{max_param_diff, preference_pairs, TinyLm};

const HIDDEN: i64 = 16;

fn collator() -> Collator {
    Collator::new(CollateConfig::new(ByteTokenizer::PAD)).unwrap()
}

fn config(total_steps: u64) -> RpoTrainerConfig {
    RpoTrainerConfig {
        learning_rate: 1e-2,
        batch_pairs: 4,
        ..RpoTrainerConfig::paper(RpoConfig::paper(0.1, 1.0), total_steps)
    }
}

/// Records what the stage reports; the gold accuracy is the number of calls so far.
#[derive(Default)]
struct Recorder {
    gold_calls: usize,
    trained: Vec<(u64, usize)>,
    rows: Vec<EvalRow>,
    summary: Option<StageSummary>,
}

impl StageHooks<TinyLm> for RefCell<Recorder> {
    fn gold_accuracy(&mut self, _model: &TinyLm) -> tch_rpo::Result<Option<f64>> {
        let mut r = self.borrow_mut();
        r.gold_calls += 1;
        Ok(Some(r.gold_calls as f64))
    }
    fn evaluated(&mut self, row: &EvalRow) -> tch_rpo::Result<()> {
        self.borrow_mut().rows.push(row.clone());
        Ok(())
    }
    fn trained(&mut self, steps: &TrainedSteps<'_>) -> tch_rpo::Result<()> {
        assert!(steps.main);
        assert_eq!(steps.method, "rpo");
        self.borrow_mut().trained.push((steps.step, steps.history.len()));
        Ok(())
    }
    fn finished(&mut self, summary: &StageSummary) -> tch_rpo::Result<()> {
        self.borrow_mut().summary = Some(summary.clone());
        Ok(())
    }
}

#[test]
fn stage_rows_equal_an_independent_trainers_evaluations() {
    let (pairs, collator) = (preference_pairs(12), collator());
    // 3 steps per epoch, 2 epochs; 2 evaluations per epoch: every max(1, 3 / 2) = 1 step.
    let total = 6;
    let mut stages = Stages::new(&pairs, &collator, Collective::single(), 3, 2, 5).unwrap();
    let mut hooks = RefCell::new(Recorder::default());
    let trained = stages
        .train(
            "rpo",
            TinyLm::new(1, HIDDEN),
            ReferenceSource::Free,
            config(total),
            &mut hooks,
        )
        .unwrap();

    // Independently: the same trainer stepped one step at a time, evaluated before and after each step.
    let mut reference =
        RpoTrainer::new(TinyLm::new(1, HIDDEN), ReferenceSource::Free, config(total)).unwrap();
    let mut expected = Vec::new();
    for step in 0..=total {
        if step > 0 {
            assert_eq!(reference.fit_steps(&pairs, &collator, Some(1)).unwrap().len(), 1);
        }
        let metrics = reference.evaluate(&pairs, &collator, 5).unwrap();
        expected.push((step, metrics));
    }
    let rows = stages.rows();
    assert_eq!(rows.len(), expected.len());
    for (i, (row, (step, metrics))) in rows.iter().zip(&expected).enumerate() {
        assert_eq!(row.method, "rpo");
        assert_eq!(row.step, *step);
        assert_eq!(row.epoch, *step as f64 / 3.0);
        assert_eq!(row.chosen_logp, metrics.get("logps/chosen").unwrap());
        assert_eq!(row.rejected_logp, metrics.get("logps/rejected").unwrap());
        assert_eq!(row.reward_accuracy, metrics.get("rewards/accuracies").unwrap());
        assert_eq!(row.reward_margin, metrics.get("rewards/margins").unwrap());
        assert_eq!(row.gold_accuracy, Some(i as f64 + 1.0));
    }
    assert_eq!(
        max_param_diff(&trained.named_parameters(), &reference.model().named_parameters()),
        0.0
    );

    let recorded = hooks.into_inner();
    assert_eq!(recorded.rows, rows);
    assert_eq!(recorded.trained, (1..=total).map(|s| (s, 1)).collect::<Vec<_>>());
    let summary = recorded.summary.expect("finished");
    assert_eq!(
        (summary.method.as_str(), summary.steps, summary.world_size),
        ("rpo", total, 1)
    );
    assert!(summary.to_string().starts_with("rpo: 6 steps in "), "{summary}");
}

#[test]
fn stages_chain_and_zero_settings() {
    let (pairs, collator) = (preference_pairs(8), collator());
    for (steps, evals, batch, name) in [
        (0, 1, 1, "steps_per_epoch"),
        (1, 0, 1, "evals_per_epoch"),
        (1, 1, 0, "eval_batch"),
    ] {
        match Stages::new(&pairs, &collator, Collective::single(), steps, evals, batch) {
            Err(Error::Input(InputError::InvalidParameter { name: got, .. })) => assert_eq!(got, name),
            other => panic!(
                "expected an InvalidParameter error for {name}, got {:?}",
                other.err()
            ),
        }
    }
    // Two stages on one chain: the second's rows follow the first's; default hooks measure no gold.
    let mut stages = Stages::new(&pairs, &collator, Collective::single(), 2, 1, 8).unwrap();
    let sft = RpoTrainerConfig {
        batch_pairs: 4,
        ..RpoTrainerConfig::paper(RpoConfig::sft_only(tch_rpo::SftNormalization::TokenMean), 2)
    };
    struct NoHooks;
    impl StageHooks<TinyLm> for NoHooks {}
    let model = stages
        .train(
            "sft",
            TinyLm::new(2, HIDDEN),
            ReferenceSource::Free,
            sft,
            &mut NoHooks,
        )
        .unwrap();
    let cache = stages
        .score_reference(&model, &tch_rpo::train::ScoringOptions::new(8))
        .unwrap();
    stages
        .train(
            "dpo",
            model,
            ReferenceSource::Cached(cache),
            config(2),
            &mut NoHooks,
        )
        .unwrap();
    let methods: Vec<(&str, u64)> = stages
        .rows()
        .iter()
        .map(|r| (r.method.as_str(), r.step))
        .collect();
    assert_eq!(methods, [("sft", 0), ("sft", 2), ("dpo", 0), ("dpo", 2)]);
    assert!(stages.rows().iter().all(|r| r.gold_accuracy.is_none()));
    assert!(stages.is_main() && !stages.collective().is_distributed());
}

fn row(method: &str, gold: Option<f64>) -> EvalRow {
    EvalRow {
        method: method.to_string(),
        epoch: 0.5,
        step: 2,
        chosen_logp: -1.25,
        rejected_logp: -3.0,
        reward_accuracy: 0.75,
        reward_margin: 0.1,
        gold_accuracy: gold,
    }
}

#[test]
fn metrics_csv_text_and_file() {
    let rows = [row("sft", None), row("rpo", Some(0.5))];
    let text = metrics_csv(&rows);
    assert_eq!(
        text,
        format!("{METRICS_CSV_HEADER}\nsft,0.5,2,-1.25,-3,0.75,0.1,\nrpo,0.5,2,-1.25,-3,0.75,0.1,0.5\n")
    );
    assert_eq!(
        METRICS_CSV_HEADER,
        "method,epoch,step,chosen_logp,rejected_logp,reward_accuracy,reward_margin,gold_accuracy"
    );
    let dir = std::env::temp_dir().join(format!("tch_rpo_stages_csv_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.csv");
    write_metrics_csv(&path, &rows).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let missing = dir.join("no_such_folder").join("metrics.csv");
    assert!(matches!(
        write_metrics_csv(&missing, &rows),
        Err(Error::Input(InputError::InvalidPath { .. }))
    ));
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        EvalRow::table_header(),
        "method  epoch  step chosen_logp rejected_logp   rew_acc    margin   gold"
    );
    assert_eq!(
        rows[0].table_line(),
        "sft      0.50     2     -1.2500       -3.0000     0.750    0.1000    n/a"
    );
    assert!(rows[1].table_line().ends_with("  0.500"));
}
