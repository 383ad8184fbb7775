//! Opt-in wall-clock timing of a training step's phases, per thread.
//!
//! Between [`begin`] and [`end`] on a thread, every [`timed`] call on that thread adds its wall-clock time
//! to its [`Phase`]; outside (the default) [`timed`] only runs its closure. The trainer opens a window
//! around each step when [`crate::train::RpoTrainerConfig::phase_timing`] is set and reports the result in
//! [`crate::train::StepMetrics::phases`].
//!
//! On the CPU libtorch's ops are synchronous (they return when their result is computed, whatever the
//! number of intra-op threads), so the wall clock of a phase is exactly its compute time. On CUDA kernels
//! are queued and the time lands in whichever phase next reads a result on the host: there the table shows
//! where the host waited, not where the device worked.
//!
//! Phases nest: [`Phase::Attention`] is part of [`Phase::BodyForward`], [`Phase::Reference`] and
//! [`Phase::BodyBackward`] (whose recomputation under gradient checkpointing runs the forward pass again);
//! the other phases do not overlap, and [`PhaseTimes::other`] is the step's time outside all of them. A
//! step that fails leaves its window open: the next [`begin`] restarts it.

use std::cell::RefCell;
use std::time::Instant;

/// A phase of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Collating the step's micro-batches and moving them to the device.
    Data,
    /// The reference model's forward passes (scoring the batch under `no_grad`).
    Reference,
    /// The policy's decoder body forward (embedding, layers, final norm; with gradient checkpointing the
    /// first, un-recorded pass).
    BodyForward,
    /// Attention cores ([`crate::models::attention::attend`]) wherever they run, forward only (their
    /// backward is in [`Phase::BodyBackward`]); included in [`Phase::BodyForward`], [`Phase::BodyBackward`]
    /// (recomputation) and [`Phase::Reference`].
    Attention,
    /// The loss: the LM head and log-probs (on the fused path the head's forward and its weight gradient,
    /// chunk by chunk) and the objective.
    Head,
    /// `loss.backward()`: the backward pass down to the hidden states (on the logits path, the whole
    /// backward pass).
    LossBackward,
    /// The decoder body's backward pass from the hidden states (with gradient checkpointing including the
    /// recomputed forward).
    BodyBackward,
    /// Host reads of the step's loss and metrics (the values logged).
    HostSync,
    /// Gradient norm, clipping, the AdamW update and clearing the gradients.
    Optimizer,
}

impl Phase {
    /// Every phase, in the order of a step.
    pub const ALL: [Phase; 9] = [
        Phase::Data,
        Phase::Reference,
        Phase::BodyForward,
        Phase::Attention,
        Phase::Head,
        Phase::LossBackward,
        Phase::BodyBackward,
        Phase::HostSync,
        Phase::Optimizer,
    ];

    /// The phase's name in logs: `data`, `reference`, `body_forward`, `attention`, `head`,
    /// `loss_backward`, `body_backward`, `host_sync`, `optimizer`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::Reference => "reference",
            Phase::BodyForward => "body_forward",
            Phase::Attention => "attention",
            Phase::Head => "head",
            Phase::LossBackward => "loss_backward",
            Phase::BodyBackward => "body_backward",
            Phase::HostSync => "host_sync",
            Phase::Optimizer => "optimizer",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Seconds spent in each [`Phase`] during one timing window, and the window's total.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseTimes {
    seconds: [f64; Phase::ALL.len()],
    total: f64,
}

impl PhaseTimes {
    /// Seconds in `phase`.
    pub fn get(&self, phase: Phase) -> f64 {
        self.seconds[phase.index()]
    }

    /// Seconds of the whole window ([`begin`] to [`end`]).
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Seconds of the window outside every phase (total minus the phases, [`Phase::Attention`] not
    /// subtracted as it lies inside others), at least 0.
    pub fn other(&self) -> f64 {
        let counted: f64 = Phase::ALL
            .iter()
            .filter(|&&p| p != Phase::Attention)
            .map(|&p| self.get(p))
            .sum();
        (self.total - counted).max(0.0)
    }

    /// `(name, seconds)` of every phase in [`Phase::ALL`] order, then `("other", …)` and `("total", …)`.
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> = Phase::ALL.iter().map(|&p| (p.name(), self.get(p))).collect();
        out.push(("other", self.other()));
        out.push(("total", self.total));
        out
    }
}

struct Window {
    start: Instant,
    times: PhaseTimes,
}

thread_local! {
    static WINDOW: RefCell<Option<Window>> = const { RefCell::new(None) };
}

/// Opens a timing window on this thread (restarting one that is open).
pub fn begin() {
    WINDOW.with(|w| {
        *w.borrow_mut() = Some(Window {
            start: Instant::now(),
            times: PhaseTimes::default(),
        })
    });
}

/// Whether a timing window is open on this thread.
pub fn is_open() -> bool {
    WINDOW.with(|w| w.borrow().is_some())
}

/// Closes this thread's window and returns its times (`None` if none was open).
pub fn end() -> Option<PhaseTimes> {
    WINDOW.with(|w| {
        w.borrow_mut().take().map(|window| PhaseTimes {
            total: window.start.elapsed().as_secs_f64(),
            ..window.times
        })
    })
}

/// Runs `f`, adding its wall-clock time to `phase` when a window is open on this thread.
pub fn timed<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    if !is_open() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    WINDOW.with(|w| {
        if let Some(window) = w.borrow_mut().as_mut() {
            window.times.seconds[phase.index()] += seconds;
        }
    });
    out
}
