//! `tch_rpo::dist`: the launcher environment's errors, a one-rank group in this process, and two-rank Gloo
//! groups in child processes (this test binary re-executed with `TCH_RPO_DIST_WORKER` set, by hand or
//! under torchrun): exact collectives, and a killed or hung rank making the other fail within its
//! timeout, naming the rank. Buckets and the distributed sampler are checked against plain Rust.

mod common;
mod rank_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rank_support::{free_port, stream, wait_all, worker_command};

use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tch_rpo::data::sampler::BatchSampler;
use tch_rpo::dist::{
    all_reduce_buckets_, flatten, plan_buckets, shard_range, unflatten_into, DistOptions, DistributedSampler,
    LaunchEnv, ProcessGroup, ReduceOp,
};
use tch_rpo::Error;
use tch_rpo::{DistError, InputError};

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

const GOOD: [(&str, &str); 5] = [
    ("RANK", "1"),
    ("WORLD_SIZE", "2"),
    ("LOCAL_RANK", "1"),
    ("MASTER_ADDR", "127.0.0.1"),
    ("MASTER_PORT", "29512"),
];

fn env_with(var: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
    let mut vars: Vec<(&'static str, String)> = GOOD
        .iter()
        .filter(|(k, _)| *k != var)
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    if let Some(v) = value {
        let key = GOOD
            .iter()
            .map(|(k, _)| *k)
            .find(|k| *k == var)
            .unwrap_or("TORCHELASTIC_USE_AGENT_STORE");
        vars.push((key, v.to_string()));
    }
    vars
}

fn parse(vars: &[(&'static str, String)]) -> tch_rpo::Result<LaunchEnv> {
    LaunchEnv::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
}

fn single_group() -> ProcessGroup {
    let env = LaunchEnv::single("127.0.0.1", free_port());
    ProcessGroup::new(
        &env,
        &DistOptions::default().with_timeout(Duration::from_secs(20)),
    )
    .unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// Rank `rank`'s deterministic test values (small integers and halves: sums are exact in f32/bf16).
fn rank_values(rank: usize, n: usize, salt: u64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let h = (i as u64)
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(salt * 31 + rank as u64 * 7)
                % 17;
            h as f64 * 0.5 - 3.0 + rank as f64
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Launcher environment
// ---------------------------------------------------------------------------------------------------------

#[test]
fn launch_env_reads_every_variable() {
    let env = LaunchEnv::from_lookup(lookup(&GOOD)).unwrap();
    assert_eq!(
        env,
        LaunchEnv {
            rank: 1,
            world_size: 2,
            local_rank: Some(1),
            master_addr: "127.0.0.1".into(),
            master_port: 29512,
            agent_store: false,
        }
    );
    let mut vars = GOOD.to_vec();
    vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    vars.retain(|(k, _)| *k != "LOCAL_RANK");
    let env = LaunchEnv::from_lookup(lookup(&vars)).unwrap();
    assert!(env.agent_store);
    assert_eq!(env.local_rank, None);
}

#[test]
fn launch_env_errors_name_the_variable_and_value() {
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("RANK", None),
        ("RANK", Some("one")),
        ("RANK", Some("-1")),
        ("RANK", Some("2")),
        ("WORLD_SIZE", None),
        ("WORLD_SIZE", Some("0")),
        ("WORLD_SIZE", Some("two")),
        ("LOCAL_RANK", Some("x")),
        ("LOCAL_RANK", Some("2")),
        ("MASTER_ADDR", None),
        ("MASTER_ADDR", Some("  ")),
        ("MASTER_PORT", None),
        ("MASTER_PORT", Some("0")),
        ("MASTER_PORT", Some("70000")),
        ("MASTER_PORT", Some("http")),
        ("TORCHELASTIC_USE_AGENT_STORE", Some("maybe")),
    ];
    for (var, value) in cases {
        let vars = env_with(var, value);
        match parse(&vars) {
            Err(Error::Dist(DistError::Env {
                var: got_var,
                value: got_value,
                ..
            })) => {
                assert_eq!(got_var, var, "{var}={value:?}");
                assert_eq!(got_value.as_deref(), value, "{var}={value:?}");
                let text = parse(&vars).unwrap_err().to_string();
                assert!(text.contains(var), "{text}");
            }
            other => panic!("{var}={value:?}: expected DistEnv, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// One rank, in this process
// ---------------------------------------------------------------------------------------------------------

#[test]
fn one_rank_group_collectives_are_identities() {
    let g = single_group();
    assert_eq!((g.rank(), g.world_size(), g.device()), (0, 1, Device::Cpu));
    let want = rank_values(0, 37, 1);
    for kind in [Kind::Float, Kind::Double, Kind::Int64] {
        let mut t = Tensor::from_slice(&want).to_kind(kind).reshape([37, 1]);
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
            g.all_reduce_(&mut t, op).unwrap();
        }
        g.broadcast_(&mut t, 0).unwrap();
        let expect: Vec<f64> = if kind == Kind::Int64 {
            want.iter().map(|v| v.trunc()).collect()
        } else {
            want.clone()
        };
        assert_eq!(to_vec(&t), expect);
    }
    let mut xs = [1.5, -2.0, 1e300];
    g.all_reduce_f64(&mut xs, ReduceOp::Sum).unwrap();
    assert_eq!(xs, [1.5, -2.0, 1e300]);
    g.barrier().unwrap();
}

#[test]
fn collective_input_errors() {
    let g = single_group();
    let base = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([2, 3]);
    let mut strided = base.tr();
    assert!(matches!(
        g.all_reduce_sum_(&mut strided),
        Err(Error::Input(InputError::Shape { arg: "tensor", .. }))
    ));
    let mut grad = base.copy().set_requires_grad(true);
    assert!(matches!(
        g.all_reduce_sum_(&mut grad),
        Err(Error::Input(InputError::Config { name: "tensor", .. }))
    ));
    let mut t = base.copy();
    assert!(matches!(
        g.broadcast_(&mut t, 1),
        Err(Error::Input(InputError::InvalidParameter { name: "root", .. }))
    ));
    // Bad inputs are refused before any communication: the group still works.
    g.all_reduce_sum_(&mut t).unwrap();
    assert_eq!(to_vec(&t), to_vec(&base));
}

#[test]
fn hosting_on_a_taken_port_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = LaunchEnv::single("127.0.0.1", port);
    let start = Instant::now();
    let err =
        ProcessGroup::new(&env, &DistOptions::default().with_timeout(Duration::from_secs(5))).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dist(DistError::Failed {
                op: "connect",
                rank: 0,
                ..
            }) | Error::Dist(DistError::PeerLost { op: "connect", .. })
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
}

#[test]
fn a_client_without_a_store_reports_it_unreachable() {
    let env = LaunchEnv {
        rank: 1,
        world_size: 2,
        local_rank: None,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        agent_store: false,
    };
    let start = Instant::now();
    let err =
        ProcessGroup::new(&env, &DistOptions::default().with_timeout(Duration::from_secs(2))).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(
            &err,
            Error::Dist(DistError::Store {
                rank: 1,
                timeout_ms: 2000,
                peer: tch_rpo::DistStorePeer::Unreachable,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", env.master_port)),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
}

#[test]
fn a_host_whose_peers_never_come_times_out() {
    let env = LaunchEnv {
        world_size: 2,
        ..LaunchEnv::single("127.0.0.1", free_port())
    };
    let start = Instant::now();
    let err =
        ProcessGroup::new(&env, &DistOptions::default().with_timeout(Duration::from_secs(2))).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dist(DistError::Timeout {
                op: "connect",
                rank: 0,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(8), "{:?}", start.elapsed());
}

#[test]
fn nccl_is_refused_without_local_rank() {
    let env = LaunchEnv {
        local_rank: None,
        ..LaunchEnv::single("127.0.0.1", free_port())
    };
    let opts = DistOptions::default().with_backend(tch_rpo::dist::Backend::Nccl);
    assert!(matches!(
        ProcessGroup::new(&env, &opts),
        Err(Error::Dist(DistError::Env {
            var: "LOCAL_RANK",
            value: None,
            ..
        }))
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Buckets
// ---------------------------------------------------------------------------------------------------------

fn random_tensors(shapes: &[(Vec<i64>, u8)], salt: u64) -> Vec<Tensor> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, (shape, k))| {
            let n: i64 = shape.iter().product();
            let kind = [Kind::Float, Kind::Double, Kind::BFloat16][*k as usize % 3];
            Tensor::from_slice(&rank_values(i, n as usize, salt))
                .to_kind(kind)
                .reshape(shape.as_slice())
        })
        .collect()
}

fn shapes() -> impl Strategy<Value = Vec<(Vec<i64>, u8)>> {
    prop::collection::vec((prop::collection::vec(1i64..6, 0..4), 0u8..3), 1..12)
}

proptest! {
    #![proptest_config(common::proptest_config(64))]

    #[test]
    fn buckets_cover_every_tensor_once_in_order(shapes in shapes(), cap in 1usize..400) {
        let ts = random_tensors(&shapes, 3);
        let buckets = plan_buckets(&ts, cap).unwrap();
        let mut next = 0;
        for b in &buckets {
            prop_assert_eq!(b.start, next);
            prop_assert!(b.end > b.start);
            next = b.end;
            let kinds: Vec<Kind> = ts[b.clone()].iter().map(|t| t.kind()).collect();
            prop_assert!(kinds.iter().all(|k| *k == kinds[0]));
            let bytes: usize = ts[b.clone()].iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum();
            prop_assert!(bytes <= cap || b.len() == 1, "bucket {:?} holds {} bytes > {}", b, bytes, cap);
        }
        prop_assert_eq!(next, ts.len());
        // Maximal: a bucket is closed only by a dtype change or by the cap.
        for w in buckets.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let bytes: usize = ts[a.start..=b.start].iter().map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum();
            prop_assert!(ts[b.start].kind() != ts[a.start].kind() || bytes > cap);
        }
    }

    #[test]
    fn flatten_then_unflatten_round_trips(shapes in prop::collection::vec(prop::collection::vec(1i64..6, 0..4), 1..8)) {
        let with_kind: Vec<(Vec<i64>, u8)> = shapes.into_iter().map(|s| (s, 1)).collect();
        let ts = random_tensors(&with_kind, 5);
        let flat = flatten(&ts).unwrap();
        let want: Vec<f64> = ts.iter().flat_map(to_vec).collect();
        prop_assert_eq!(to_vec(&flat), want);
        let mut out: Vec<Tensor> = ts.iter().map(|t| t.zeros_like()).collect();
        unflatten_into(&flat, &mut out).unwrap();
        for (a, b) in ts.iter().zip(&out) {
            prop_assert_eq!(a.size(), b.size());
            prop_assert_eq!(to_vec(a), to_vec(b));
        }
    }
}

#[test]
fn bucket_errors() {
    let a = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([2], (Kind::Double, Device::Cpu));
    assert!(matches!(
        plan_buckets(&[a.copy()], 0),
        Err(Error::Input(InputError::InvalidParameter {
            name: "bucket_bytes",
            ..
        }))
    ));
    assert!(matches!(
        flatten(&[]),
        Err(Error::Input(InputError::EmptyBatch { arg: "tensors", .. }))
    ));
    assert!(matches!(
        flatten(&[a.copy(), b.copy()]),
        Err(Error::Input(InputError::DType { arg: "tensors", .. }))
    ));
    let mut outs = [a.copy()];
    let too_long = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    assert!(matches!(
        unflatten_into(&too_long, &mut outs),
        Err(Error::Input(InputError::Shape { arg: "flat", .. }))
    ));
    let wrong_kind = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    assert!(matches!(
        unflatten_into(&wrong_kind, &mut outs),
        Err(Error::Input(InputError::DType { arg: "flat", .. }))
    ));
    let two_d = Tensor::zeros([3, 1], (Kind::Float, Device::Cpu));
    assert!(matches!(
        unflatten_into(&two_d, &mut outs),
        Err(Error::Input(InputError::Shape { arg: "flat", .. }))
    ));
}

#[test]
fn one_rank_bucketed_all_reduce_keeps_values() {
    let g = single_group();
    let shapes: Vec<(Vec<i64>, u8)> = vec![
        (vec![3, 4], 0),
        (vec![5], 0),
        (vec![2, 2], 1),
        (vec![7], 2),
        (vec![1], 0),
    ];
    let want: Vec<Vec<f64>> = random_tensors(&shapes, 9).iter().map(to_vec).collect();
    let mut ts = random_tensors(&shapes, 9);
    all_reduce_buckets_(&g, &mut ts, 24, ReduceOp::Sum).unwrap();
    let got: Vec<Vec<f64>> = ts.iter().map(to_vec).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------------------
// Distributed sampler
// ---------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(common::proptest_config(64))]

    #[test]
    fn shards_partition_one_process_batches(
        len in 1usize..60, batch in 1usize..20, world in 1usize..6, seed in any::<u64>(), shuffle in any::<bool>(),
        steps in 1usize..25,
    ) {
        let mut one = BatchSampler::new(len, batch, seed, shuffle).unwrap();
        let mut ranks: Vec<DistributedSampler> = (0..world)
            .map(|r| DistributedSampler::new(len, batch, seed, shuffle, r, world).unwrap())
            .collect();
        for _ in 0..steps {
            let global = one.next_batch();
            let shards: Vec<(Vec<usize>, usize)> = ranks.iter_mut().map(|s| s.next_shard()).collect();
            let joined: Vec<usize> = shards.iter().flat_map(|(s, _)| s.clone()).collect();
            prop_assert_eq!(&joined, &global);
            for (s, n) in &shards {
                prop_assert_eq!(*n, global.len());
                prop_assert!(s.len() == global.len() / world || s.len() == global.len() / world + 1);
            }
            for s in &ranks {
                prop_assert_eq!(s.position(), one.position());
            }
        }
        // Resuming from the position gives the same shards.
        let pos = ranks[0].position();
        let mut resumed = DistributedSampler::new(len, batch, seed, shuffle, world - 1, world).unwrap();
        resumed.set_position(pos).unwrap();
        prop_assert_eq!(resumed.next_shard(), ranks[world - 1].next_shard());
    }

    #[test]
    fn shard_ranges_are_disjoint_and_cover(len in 0usize..100, world in 1usize..9) {
        let mut next = 0;
        for r in 0..world {
            let range = shard_range(len, r, world).unwrap();
            prop_assert_eq!(range.start, next);
            next = range.end;
        }
        prop_assert_eq!(next, len);
    }
}

#[test]
fn sampler_errors() {
    assert!(matches!(
        shard_range(4, 2, 2),
        Err(Error::Input(InputError::Config { name: "rank", .. }))
    ));
    assert!(matches!(
        shard_range(4, 0, 0),
        Err(Error::Input(InputError::Config { name: "rank", .. }))
    ));
    assert!(matches!(
        DistributedSampler::new(10, 2, 0, true, 3, 3),
        Err(Error::Input(InputError::Config { .. }))
    ));
    assert!(matches!(
        DistributedSampler::new(0, 2, 0, true, 0, 1),
        Err(Error::Input(InputError::Config { .. }))
    ));
    assert!(matches!(
        DistributedSampler::new(10, 0, 0, true, 0, 1),
        Err(Error::Input(InputError::Config { .. }))
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Two ranks in child processes
// ---------------------------------------------------------------------------------------------------------

const WORKER: &str = "TCH_RPO_DIST_WORKER";
const VICTIM: &str = "TCH_RPO_DIST_VICTIM";

/// The child side: runs when this binary is re-executed with `TCH_RPO_DIST_WORKER` set; a no-op otherwise.
#[test]
fn dist_worker_entry() {
    let Ok(role) = std::env::var(WORKER) else { return };
    match role.as_str() {
        "exact" => worker_exact(),
        "failure" => worker_failure(),
        other => panic!("unknown worker role {other}"),
    }
}

fn worker_exact() {
    let g = ProcessGroup::from_env(&DistOptions::default().with_timeout(Duration::from_secs(30))).unwrap();
    let (rank, world) = (g.rank(), g.world_size());
    let n = 1000;
    // Sum, max, min over ranks, in f32, f64, bf16 and i64: every rank computes every rank's values.
    for (salt, kind) in [
        (1, Kind::Float),
        (2, Kind::Double),
        (3, Kind::BFloat16),
        (4, Kind::Int64),
    ] {
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
            let all: Vec<Vec<f64>> = (0..world)
                .map(|r| {
                    let v = rank_values(r, n, salt);
                    if kind == Kind::Int64 {
                        v.iter().map(|x| x.trunc()).collect()
                    } else {
                        v
                    }
                })
                .collect();
            let want: Vec<f64> = (0..n)
                .map(|i| {
                    let col = all.iter().map(|v| v[i]);
                    match op {
                        ReduceOp::Sum => col.sum(),
                        ReduceOp::Max => col.fold(f64::NEG_INFINITY, f64::max),
                        ReduceOp::Min => col.fold(f64::INFINITY, f64::min),
                    }
                })
                .collect();
            let mut t = Tensor::from_slice(&all[rank]).to_kind(kind).reshape([10, 100]);
            g.all_reduce_(&mut t, op).unwrap();
            assert_eq!(t.size(), vec![10, 100]);
            assert_eq!(to_vec(&t), want, "{kind:?} {op:?}");
        }
    }
    // Broadcast from every root: arbitrary f32 bits arrive unchanged.
    for root in 0..world {
        let bits = |r: usize| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    f32::from_bits(
                        ((i as u32).wrapping_mul(2_654_435_761) ^ (r as u32 * 0x5bd1e995)) & 0x7f7f_ffff,
                    )
                })
                .collect()
        };
        let mut t = Tensor::from_slice(&bits(rank));
        g.broadcast_(&mut t, root).unwrap();
        let got = Vec::<f32>::try_from(&t).unwrap();
        assert!(
            got.iter()
                .zip(bits(root))
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "root {root}"
        );
    }
    // Host scalars.
    let mut xs = [rank as f64 + 0.25, -(rank as f64), 1.0];
    g.all_reduce_f64(&mut xs, ReduceOp::Sum).unwrap();
    let w = world as f64;
    assert_eq!(xs, [w * (w - 1.0) / 2.0 + 0.25 * w, -(w * (w - 1.0) / 2.0), w]);
    // Buckets across dtypes, with a cap that splits them.
    let shapes: Vec<(Vec<i64>, u8)> = vec![
        (vec![30, 4], 0),
        (vec![50], 0),
        (vec![2, 9], 1),
        (vec![70], 2),
        (vec![3], 0),
    ];
    let per_rank: Vec<Vec<Vec<f64>>> = (0..world)
        .map(|r| {
            random_tensors(&shapes, 11 + r as u64)
                .iter()
                .map(to_vec)
                .collect()
        })
        .collect();
    let mut ts = random_tensors(&shapes, 11 + rank as u64);
    all_reduce_buckets_(&g, &mut ts, 256, ReduceOp::Sum).unwrap();
    for (j, t) in ts.iter().enumerate() {
        let want: Vec<f64> = (0..per_rank[0][j].len())
            .map(|i| per_rank.iter().map(|p| p[j][i]).sum())
            .collect();
        assert_eq!(to_vec(t), want, "tensor {j}");
    }
    g.barrier().unwrap();
    println!(
        "WORKER_OK rank={rank} world={world} agent_store={}",
        g.launch_env().agent_store
    );
}

/// One all-reduce together; then the victim rank prints READY and stops taking part (the parent kills
/// it, or it sleeps through the others' timeout), and the other ranks' second all-reduce must fail.
fn worker_failure() {
    let victim: usize = std::env::var(VICTIM).unwrap().parse().unwrap();
    let opts = DistOptions {
        failure_window: Duration::from_secs(2),
        ..DistOptions::default().with_timeout(Duration::from_secs(4))
    };
    let g = ProcessGroup::from_env(&opts).unwrap();
    let mut t = Tensor::ones([64], (Kind::Float, Device::Cpu));
    g.all_reduce_sum_(&mut t).unwrap();
    if g.rank() == victim {
        println!("READY");
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let start = Instant::now();
    let err = g.all_reduce_sum_(&mut t).unwrap_err();
    let kind = match &err {
        Error::Dist(DistError::Timeout { .. }) => "timeout",
        Error::Dist(DistError::PeerLost { .. }) => "peer",
        _ => "other",
    };
    let unresponsive = match &err {
        Error::Dist(DistError::Timeout { unresponsive, .. })
        | Error::Dist(DistError::PeerLost { unresponsive, .. }) => unresponsive.clone(),
        _ => vec![],
    };
    println!(
        "FAILED kind={kind} unresponsive={unresponsive:?} ms={} error={err}",
        start.elapsed().as_millis()
    );
    // The group is poisoned: no hang on a half-finished protocol.
    assert!(matches!(
        g.barrier(),
        Err(Error::Dist(DistError::Failed { op: "barrier", .. }))
    ));
    println!("POISONED");
}

fn worker(role: &str) -> Command {
    let mut c = worker_command("dist_worker_entry");
    c.env(WORKER, role);
    c
}

/// Spawns `world` ranks of the worker `role` with the launcher variables set by hand.
fn spawn_ranks(role: &str, world: usize, extra: &[(&str, String)]) -> Vec<Child> {
    rank_support::spawn_ranks(world, || {
        let mut c = worker(role);
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    })
}

#[test]
fn two_ranks_collectives_are_exact() {
    let mut children = spawn_ranks("exact", 2, &[]);
    let rx = stream(&mut children);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    let lines: Vec<(usize, String)> = rx.try_iter().collect();
    assert_eq!(codes, vec![Some(0), Some(0)], "{lines:?}");
    for r in 0..2 {
        let want = format!("WORKER_OK rank={r} world=2 agent_store=false");
        assert!(lines.iter().any(|(_, l)| l.ends_with(&want)), "{lines:?}");
    }
}

#[test]
fn two_ranks_under_torchrun_are_exact() {
    let torchrun = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} is missing: run scripts/setup.sh",
        torchrun.display()
    );
    let mut c = Command::new(&torchrun);
    c.args([
        "--no-python",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
    ])
    .arg(format!("--master-port={}", free_port()))
    .arg(std::env::current_exe().unwrap())
    .args([
        "--exact",
        "dist_worker_entry",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(WORKER, "exact")
    .env("OMP_NUM_THREADS", "1")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut children = vec![c.spawn().unwrap()];
    let rx = stream(&mut children);
    let codes = wait_all(&mut children, Duration::from_secs(60));
    let lines: Vec<String> = rx.try_iter().map(|(_, l)| l).collect();
    let mut stderr = String::new();
    std::io::Read::read_to_string(children[0].stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(codes, vec![Some(0)], "{lines:?}\n{stderr}");
    for r in 0..2 {
        // torchrun's agent hosts the store: rank 0 connected to it as a client.
        let want = format!("WORKER_OK rank={r} world=2 agent_store=true");
        assert!(lines.iter().any(|l| l.ends_with(&want)), "{lines:?}\n{stderr}");
    }
}

/// Runs the failure scenario with `victim` either killed (SIGKILL once READY) or left hanging.
fn failure_case(victim: usize, kill: bool) -> String {
    let mut children = spawn_ranks("failure", 2, &[(VICTIM, victim.to_string())]);
    let rx = stream(&mut children);
    let survivor = 1 - victim;
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut failed = None;
    while failed.is_none() && start.elapsed() < Duration::from_secs(40) {
        let Ok((r, line)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        // libtest prints "test dist_worker_entry ... " in front of the worker's first line.
        if r == victim && line.ends_with("READY") && kill {
            children[victim].kill().unwrap();
        }
        if let (true, Some(at)) = (r == survivor, line.find("FAILED kind=")) {
            failed = Some(line[at..].to_string());
        }
        lines.push((r, line));
    }
    let _ = children[victim].kill();
    let codes = wait_all(&mut children[survivor..=survivor], Duration::from_secs(20));
    lines.extend(rx.try_iter());
    let _ = children[victim].wait();
    let failed = failed.unwrap_or_else(|| panic!("rank {survivor} never failed: {lines:?}"));
    eprintln!("victim {victim} (killed: {kill}): rank {survivor}: {failed}");
    assert_eq!(codes, vec![Some(0)], "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|(r, l)| *r == survivor && l.ends_with("POISONED")),
        "{lines:?}"
    );
    failed
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    line[start..].split(' ').next().unwrap()
}

#[test]
fn a_killed_rank_fails_the_other_naming_it() {
    // Rank 1 killed: rank 0 (the store's host) sees the connection close.
    let line = failure_case(1, true);
    assert_eq!(field(&line, "unresponsive"), "[1]", "{line}");
    assert!(["peer", "timeout"].contains(&field(&line, "kind")), "{line}");
    let ms: u64 = field(&line, "ms").parse().unwrap();
    assert!(ms < 4000 + 2000 + 2000, "{line}");
    assert!(line.contains("rank 1 did not respond"), "{line}");
    // Rank 0 killed: the store dies with it; rank 1 still names rank 0.
    let line = failure_case(0, true);
    assert_eq!(field(&line, "unresponsive"), "[0]", "{line}");
    let ms: u64 = field(&line, "ms").parse().unwrap();
    assert!(ms < 4000 + 2000 + 2000, "{line}");
}

#[test]
fn a_hung_rank_times_out_the_other_naming_it() {
    let line = failure_case(1, false);
    assert_eq!(field(&line, "kind"), "timeout", "{line}");
    assert_eq!(field(&line, "unresponsive"), "[1]", "{line}");
    let ms: u64 = field(&line, "ms").parse().unwrap();
    // The 4 s timeout, then the 2 s failure window, plus slack for a loaded machine.
    assert!((3500..4000 + 2000 + 3000).contains(&ms), "{line}");
}

// ---------------------------------------------------------------------------------------------------------
// NCCL (feature cuda-tests): a one-rank group on CUDA device 0
// ---------------------------------------------------------------------------------------------------------

#[cfg(feature = "cuda-tests")]
#[test]
fn nccl_one_rank_group_on_cuda() {
    use tch_rpo::dist::{nccl_compiled, Backend};
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    assert!(
        nccl_compiled(),
        "this build has no NCCL process group (see docs/distributed.md)"
    );
    let env = LaunchEnv::single("127.0.0.1", free_port());
    let g = ProcessGroup::new(
        &env,
        &DistOptions::default()
            .with_backend(Backend::Nccl)
            .with_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(g.device(), Device::Cuda(0));
    let want = rank_values(0, 1000, 1);
    let mut t = Tensor::from_slice(&want)
        .to_kind(Kind::Float)
        .to_device(g.device());
    g.all_reduce_sum_(&mut t).unwrap();
    g.broadcast_(&mut t, 0).unwrap();
    g.barrier().unwrap();
    assert_eq!(to_vec(&t.to_device(Device::Cpu)), want);
    let mut cpu = Tensor::from_slice(&want);
    assert!(matches!(
        g.all_reduce_sum_(&mut cpu),
        Err(Error::Input(InputError::DeviceMismatch { .. }))
    ));
    let mut xs = [2.5, -1.0];
    g.all_reduce_f64(&mut xs, ReduceOp::Max).unwrap();
    assert_eq!(xs, [2.5, -1.0]);
    // Timing: a 1.07 GB f32 buffer (the size of a 268M-parameter gradient), one rank.
    let mut big = Tensor::ones([268_000_000], (Kind::Float, g.device()));
    g.all_reduce_sum_(&mut big).unwrap();
    tch::Cuda::synchronize(0);
    let start = Instant::now();
    for _ in 0..5 {
        g.all_reduce_sum_(&mut big).unwrap();
    }
    tch::Cuda::synchronize(0);
    let s = start.elapsed().as_secs_f64() / 5.0;
    eprintln!(
        "NCCL world size 1: all_reduce of 1.07 GB f32 took {:.3} ms",
        s * 1e3
    );
}
