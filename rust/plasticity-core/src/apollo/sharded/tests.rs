//! Shards stepped on threads that sum through a shared buffer (a stand-in for a
//! process group) against the whole matrix stepped by `apollo_step`.

use std::sync::{Arc, Barrier, Mutex};

use super::super::test_util::{randn, seeded_state, zero_moments};
use super::super::{apollo_step, ApolloConfig, MatrixState, ScaleType, StepOutcome, Workspace};
use super::*;

/// k ranks summing in rank order, like a ring all-reduce without its reordering.
struct Group {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

struct Member {
    group: Arc<Group>,
    rank: usize,
    sent: usize,
    calls: usize,
}

impl Group {
    fn new(ranks: usize) -> Arc<Group> {
        Arc::new(Group {
            barrier: Barrier::new(ranks),
            slots: Mutex::new(vec![Vec::new(); ranks]),
        })
    }
}

impl Member {
    fn new(group: Arc<Group>, rank: usize) -> Member {
        Member {
            group,
            rank,
            sent: 0,
            calls: 0,
        }
    }

    fn sum(&mut self, vals: Vec<f64>) -> Vec<f64> {
        self.calls += 1;
        self.group.slots.lock().unwrap()[self.rank] = vals;
        self.group.barrier.wait();
        let total = {
            let slots = self.group.slots.lock().unwrap();
            let mut t = vec![0f64; slots[0].len()];
            for s in slots.iter() {
                t.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            t
        };
        self.group.barrier.wait();
        total
    }
}

impl Collective for Member {
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let t = self.sum(buf.iter().map(|&x| x as f64).collect());
        self.sent += 4 * buf.len();
        buf.iter_mut().zip(t).for_each(|(a, b)| *a = b as f32);
        Ok(())
    }
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let t = self.sum(buf.to_vec());
        self.sent += 8 * buf.len();
        buf.copy_from_slice(&t);
        Ok(())
    }
}

fn cfg(rank: usize, scale_type: ScaleType) -> ApolloConfig {
    ApolloConfig {
        lr: 1e-2,
        rank,
        scale_type,
        update_proj_gap: 10, // 5 refreshes in 50 steps
        weight_decay: 0.01,
        norm_growth_limit: Some(1.01),
        projection_precision: super::super::ProjectionPrecision::F32,
        ..Default::default()
    }
}

/// Rows or columns `lo..hi` of a row-major m×n matrix.
fn block(x: &[f32], m: usize, n: usize, axis: ShardAxis, lo: usize, hi: usize) -> Vec<f32> {
    match axis {
        ShardAxis::Rows => x[lo * n..hi * n].to_vec(),
        ShardAxis::Cols => (0..m)
            .flat_map(|i| x[i * n + lo..i * n + hi].iter().copied())
            .collect(),
    }
}

/// The length of the dimension an `axis` shard cuts.
fn cut_len(axis: ShardAxis, m: usize, n: usize) -> usize {
    match axis {
        ShardAxis::Rows => m,
        ShardAxis::Cols => n,
    }
}

/// Rank `rank`'s half of `0..along` when two ranks split it.
fn half(rank: usize, along: usize) -> (usize, usize) {
    if rank == 0 {
        (0, along / 2)
    } else {
        (along / 2, along)
    }
}

/// The shard of rows or columns `lo..hi` of an m×n matrix, with its local shape.
fn shard_of(m: usize, n: usize, axis: ShardAxis, lo: usize, hi: usize) -> (Shard, usize, usize) {
    let shard = Shard {
        axis,
        offset: lo,
        global_m: m,
        global_n: n,
    };
    let (lm, ln) = match axis {
        ShardAxis::Rows => (hi - lo, n),
        ShardAxis::Cols => (m, hi - lo),
    };
    (shard, lm, ln)
}

/// Adds the squared distance of the shard weights `w` from `want` (the whole
/// step's block) to `err`, and that of `want` from `start` (the update) to `upd`.
fn add_errors(w: &[f32], want: &[f32], start: &[f32], err: &mut f64, upd: &mut f64) {
    for ((&a, &b), &s) in w.iter().zip(want).zip(start) {
        *err += ((a - b) as f64).powi(2);
        *upd += ((b - s) as f64).powi(2);
    }
}

/// The gradient of step t: random, with a jump at step 20 so the limiter fires.
fn grad(t: u64, m: usize, n: usize) -> Vec<f32> {
    let g = randn(1000 + t, m * n, if t >= 20 { 3.0 } else { 1.0 });
    g.iter()
        .enumerate()
        .map(|(i, &x)| x + 0.2 * ((i % 7) as f32))
        .collect()
}

/// Runs `steps` steps whole and in `splits` shards; returns (relative error of the
/// update, limiter fired, bytes reduced per step per rank).
fn compare(
    m: usize,
    n: usize,
    axis: ShardAxis,
    splits: &[usize],
    c: &ApolloConfig,
    steps: u64,
) -> (f64, bool, usize) {
    let seed = 77;
    let w0 = randn(5, m * n, 0.5);
    let mut whole = w0.clone();
    let geo = Geometry::new(m, n, c.rank);
    let (mut m1, mut m2) = zero_moments(&geo);
    let mut st = seeded_state(seed);
    let mut ws = Workspace::new(1);
    let mut fired = false;
    for t in 0..steps {
        let g = grad(t, m, n);
        let out = apollo_step(
            c, m, n, &mut whole, &g, &mut m1, &mut m2, &mut st, None, &mut ws,
        )
        .unwrap();
        if let StepOutcome::Applied { limiter, .. } = out {
            fired |= limiter > 1.0;
        }
    }

    let k = splits.len() - 1;
    let group = Group::new(k);
    let handles: Vec<_> = (0..k)
        .map(|rank| {
            let (group, c, w0) = (group.clone(), c.clone(), w0.clone());
            let (lo, hi) = (splits[rank], splits[rank + 1]);
            std::thread::spawn(move || {
                let (shard, lm, ln) = shard_of(m, n, axis, lo, hi);
                let local = shard.local(lm, ln, c.rank);
                let mut w = block(&w0, m, n, axis, lo, hi);
                let (mut m1, mut m2) = zero_moments(&local);
                let mut st = seeded_state(seed);
                let mut ws = Workspace::new(1);
                let mut me = Member::new(group, rank);
                for t in 0..steps {
                    let g = block(&grad(t, m, n), m, n, axis, lo, hi);
                    apollo_step_sharded(
                        &c, &shard, lm, ln, &mut w, &g, &mut m1, &mut m2, &mut st, &mut me, &mut ws,
                    )
                    .unwrap();
                }
                assert_eq!(
                    me.sent as u64,
                    steps * shard.reduced_bytes(lm, ln, c.rank) as u64
                );
                (w, me.sent / steps as usize)
            })
        })
        .collect();
    let parts: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut err = 0f64;
    let mut upd = 0f64;
    for (rank, (w, _)) in parts.iter().enumerate() {
        let (lo, hi) = (splits[rank], splits[rank + 1]);
        let want = block(&whole, m, n, axis, lo, hi);
        let start = block(&w0, m, n, axis, lo, hi);
        add_errors(w, &want, &start, &mut err, &mut upd);
    }
    ((err / upd).sqrt(), fired, parts[0].1)
}

#[test]
fn one_step_on_shards_equals_the_whole_step() {
    for (m, n) in [(48, 20), (20, 48), (32, 32)] {
        for axis in [ShardAxis::Rows, ShardAxis::Cols] {
            let along = cut_len(axis, m, n);
            let (e, _, _) = compare(
                m,
                n,
                axis,
                &[0, along / 2, along],
                &cfg(4, ScaleType::Channel),
                1,
            );
            assert!(e < 1e-5, "{m}×{n} {axis:?}: relative error {e}");
        }
    }
}

#[test]
fn fifty_steps_with_refreshes_and_the_limiter_stay_exact() {
    for (m, n) in [(48, 20), (20, 48)] {
        for axis in [ShardAxis::Rows, ShardAxis::Cols] {
            let along = cut_len(axis, m, n);
            for (c, splits) in [
                (cfg(4, ScaleType::Channel), vec![0, along / 2, along]),
                (cfg(4, ScaleType::Channel), vec![0, 5, along / 2 + 1, along]), // uneven, 3 ranks
                (cfg(1, ScaleType::Tensor), vec![0, along / 2, along]),         // Apollo-Mini
            ] {
                let (e, fired, _) = compare(m, n, axis, &splits, &c, 50);
                assert!(
                    fired,
                    "{m}×{n} {axis:?}: the limiter never fired, the test would not cover it"
                );
                assert!(
                    e < 1e-5,
                    "{m}×{n} {axis:?} rank {} splits {splits:?}: relative error {e}",
                    c.rank
                );
            }
        }
    }
}

#[test]
fn communication_is_scalars_or_one_r_sized_sum() {
    // tall 48×20: channels are rows. A row block keeps its channels (5 f64 scalars);
    // a column block cuts d, so R (48 × r f32) and the 48 row norms (f64) are summed.
    let c = cfg(4, ScaleType::Channel);
    let (_, _, rows) = compare(48, 20, ShardAxis::Rows, &[0, 24, 48], &c, 3);
    let (_, _, cols) = compare(48, 20, ShardAxis::Cols, &[0, 10, 20], &c, 3);
    assert_eq!(rows, 40);
    assert_eq!(cols, 4 * 48 * 4 + 8 * 48);
}

#[test]
fn a_non_finite_shard_stops_every_rank() {
    for axis in [ShardAxis::Rows, ShardAxis::Cols] {
        let (m, n) = (48, 20);
        let c = cfg(4, ScaleType::Channel);
        let group = Group::new(2);
        let along = cut_len(axis, m, n);
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (group, c) = (group.clone(), c.clone());
                std::thread::spawn(move || {
                    let (lo, hi) = half(rank, along);
                    let (shard, lm, ln) = shard_of(m, n, axis, lo, hi);
                    let local = shard.local(lm, ln, 4);
                    let mut g = vec![0.1f32; lm * ln];
                    if rank == 1 {
                        g[3] = f32::NAN;
                    }
                    let mut w = vec![1f32; lm * ln];
                    let (mut m1, mut m2) = zero_moments(&local);
                    let mut st = MatrixState::default();
                    let mut me = Member::new(group, rank);
                    let out = apollo_step_sharded(
                        &c,
                        &shard,
                        lm,
                        ln,
                        &mut w,
                        &g,
                        &mut m1,
                        &mut m2,
                        &mut st,
                        &mut me,
                        &mut Workspace::new(1),
                    )
                    .unwrap();
                    assert_eq!(out, StepOutcome::SkippedNonFinite, "rank {rank} {axis:?}");
                    assert!(
                        w.iter().all(|&x| x == 1.0) && m1.iter().all(|&x| x == 0.0) && st.step == 0
                    );
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
}

#[test]
fn a_block_that_is_not_a_shard_is_refused() {
    let c = cfg(4, ScaleType::Channel);
    let mut me = Member::new(Group::new(1), 0);
    let (mut w, g) = (vec![0f32; 10 * 20], vec![0f32; 10 * 20]);
    let (mut m1, mut m2) = (vec![0f32; 40], vec![0f32; 40]);
    for (axis, offset, lm, ln, accepted) in [
        (ShardAxis::Rows, 40, 10, 20, "rows 40..50 of 48 accepted"),
        (
            ShardAxis::Cols,
            0,
            24,
            10,
            "a column block with half the rows accepted",
        ),
    ] {
        let shard = Shard {
            axis,
            offset,
            global_m: 48,
            global_n: 20,
        };
        let err = apollo_step_sharded(
            &c,
            &shard,
            lm,
            ln,
            &mut w,
            &g,
            &mut m1,
            &mut m2,
            &mut MatrixState::default(),
            &mut me,
            &mut Workspace::new(1),
        );
        assert!(err.is_err(), "{accepted}");
    }
}

#[test]
fn many_matrices_take_three_sums_and_match_their_whole_steps() {
    // tall and wide, cut both ways, and one whose gradient is NaN on rank 1 only
    let mats: Vec<(usize, usize, ShardAxis)> = vec![
        (48, 20, ShardAxis::Rows),
        (48, 20, ShardAxis::Cols),
        (20, 48, ShardAxis::Rows),
        (20, 48, ShardAxis::Cols),
        (32, 24, ShardAxis::Cols),
    ];
    let poisoned = 4;
    let c = cfg(4, ScaleType::Channel);
    let steps = 12u64;
    let wholes: Vec<Vec<f32>> = mats
        .iter()
        .enumerate()
        .map(|(i, &(m, n, _))| {
            let mut w = randn(50 + i as u64, m * n, 0.5);
            let geo = Geometry::new(m, n, c.rank);
            let (mut m1, mut m2) = zero_moments(&geo);
            let mut st = seeded_state(9 + i as u64);
            let mut ws = Workspace::new(1);
            for t in 0..steps {
                if i != poisoned {
                    let g = grad(t, m, n);
                    apollo_step(
                        &c, m, n, &mut w, &g, &mut m1, &mut m2, &mut st, None, &mut ws,
                    )
                    .unwrap();
                }
            }
            w
        })
        .collect();
    let group = Group::new(2);
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (group, c, mats) = (group.clone(), c.clone(), mats.clone());
            std::thread::spawn(move || {
                let mut blocks: Vec<_> = mats
                    .iter()
                    .enumerate()
                    .map(|(i, &(m, n, axis))| {
                        let (lo, hi) = half(rank, cut_len(axis, m, n));
                        let (shard, lm, ln) = shard_of(m, n, axis, lo, hi);
                        let len = shard.local(lm, ln, c.rank).moment_len();
                        let w = block(&randn(50 + i as u64, m * n, 0.5), m, n, axis, lo, hi);
                        let st = seeded_state(9 + i as u64);
                        (
                            shard,
                            lm,
                            ln,
                            w,
                            vec![0f32; len],
                            vec![0f32; len],
                            st,
                            lo,
                            hi,
                        )
                    })
                    .collect();
                let mut me = Member::new(group, rank);
                let mut ws = Workspace::new(1);
                for t in 0..steps {
                    let grads: Vec<Vec<f32>> = mats
                        .iter()
                        .zip(&blocks)
                        .enumerate()
                        .map(|(i, (&(m, n, axis), b))| {
                            let mut g = block(&grad(t, m, n), m, n, axis, b.7, b.8);
                            if i == poisoned && rank == 1 {
                                g[0] = f32::NAN;
                            }
                            g
                        })
                        .collect();
                    let mut jobs: Vec<ShardJob<'_, f32>> = blocks
                        .iter_mut()
                        .zip(&grads)
                        .map(|(b, g)| ShardJob {
                            shard: b.0,
                            m: b.1,
                            n: b.2,
                            w: &mut b.3,
                            g,
                            exp_avg: &mut b.4,
                            exp_avg_sq: &mut b.5,
                            state: &mut b.6,
                        })
                        .collect();
                    let out = apollo_step_sharded_many(&c, &mut jobs, &mut me, &mut ws).unwrap();
                    assert_eq!(
                        out[poisoned],
                        StepOutcome::SkippedNonFinite,
                        "rank {rank} step {t}"
                    );
                    assert!(out
                        .iter()
                        .enumerate()
                        .all(|(i, o)| i == poisoned || o.applied()));
                }
                assert_eq!(
                    me.calls as u64,
                    3 * steps,
                    "three sums per step, not one per matrix"
                );
                blocks
                    .into_iter()
                    .map(|b| (b.3, b.7, b.8))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let parts: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, &(m, n, axis)) in mats.iter().enumerate() {
        let (mut err, mut upd) = (0f64, 0f64);
        let start = randn(50 + i as u64, m * n, 0.5);
        for part in &parts {
            let (w, lo, hi) = &part[i];
            let want = block(&wholes[i], m, n, axis, *lo, *hi);
            let w0 = block(&start, m, n, axis, *lo, *hi);
            add_errors(w, &want, &w0, &mut err, &mut upd);
        }
        if i == poisoned {
            assert_eq!(upd, 0.0);
            assert_eq!(err, 0.0, "a skipped matrix was written");
        } else {
            assert!(
                (err / upd).sqrt() < 1e-5,
                "matrix {i}: {}",
                (err / upd).sqrt()
            );
        }
    }
}
