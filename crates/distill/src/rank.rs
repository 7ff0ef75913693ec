//! Candidates ranked after short distillation, by successive halving (Minitron §3: the pruned
//! candidates are each lightly retrained before one is chosen, because the best one before
//! training is often not the best after it; Model-Optimizer leaves this step to the user).
//!
//! Every candidate (an HF directory, pruned from the teacher) is distilled for `TOKENS` tokens,
//! its KL to the teacher measured on validation text; the better half goes on for as many
//! tokens again (cumulative budgets TOKENS, 2·TOKENS, 4·TOKENS...), and so on until one is
//! left. A candidate continues its own run from round to round (a constant learning rate after
//! warmup, so pausing changes nothing: the runner's `pause_at`), and every candidate reads the
//! same windows in the same order.
//!
//! The teacher runs once per training window: its top-k rows are kept in memory (`Memo`) and
//! every candidate trains on them. Validation KL is on the full vocabulary (the teacher is
//! run again for it: a few windows).
//!
//! OUT/rank.json holds the state after every candidate's round, so an interrupted ranking
//! continues (a candidate from its last checkpoint) and ends as an uninterrupted one would.

use crate::{vocab_map, DistillError, OnlineTeacher};
use orlik_io::hfdir::HfModel;
use orlik_train::lm::{Control, RunDir};
use orlik_train::optim::Schedule;
use orlik_train::runner::Outcome;
use orlik_train::trainer::Split;
use orlik_train::{StepRows, TeacherSource, TrainConfig, TrainError, Trainer};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The recipe's `[search]` section: how the candidate that goes on to distillation is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankSettings {
    /// `kl`: prune's pick, the shape with the least KL to the original without training
    /// (default). `kd:TOKENS`: the best `candidates` by that KL are each distilled for TOKENS
    /// tokens, the better half for as many again, until one is left (successive halving).
    pub rank_by: String,
    /// How many of prune's best-by-KL candidates enter the rounds. Default 4.
    pub candidates: usize,
    /// Teacher rows kept per position for the rounds' training (top-k with the tail mass).
    /// Default 64.
    pub topk: usize,
    /// Validation tokens for each candidate's KL (full vocabulary) before and after every
    /// round. Default 4096.
    pub val_tokens: usize,
}

impl Default for RankSettings {
    fn default() -> Self {
        RankSettings { rank_by: "kl".into(), candidates: 4, topk: 64, val_tokens: 4096 }
    }
}

fn bad(msg: String) -> DistillError {
    DistillError::Mismatch(msg)
}

impl RankSettings {
    /// The first round's tokens per candidate for `kd:TOKENS`, None for `kl`.
    pub fn kd_tokens(&self) -> Result<Option<u64>, DistillError> {
        let r = self.rank_by.trim();
        if r == "kl" {
            return Ok(None);
        }
        let n = r.strip_prefix("kd:").map(|n| n.trim().replace('_', ""));
        match n.as_deref().map(str::parse::<u64>) {
            Some(Ok(t)) if t > 0 => Ok(Some(t)),
            _ => Err(bad(format!(
                "search.rank_by {:?}: expected \"kl\" (prune's KL ranking) or \"kd:TOKENS\" with a positive token count (e.g. \"kd:20000\")",
                self.rank_by
            ))),
        }
    }

    /// Every setting in range, named as the recipe key.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.kd_tokens()?.is_none() {
            return Ok(());
        }
        if self.candidates < 2 {
            let n = self.candidates;
            return Err(bad(format!("search.candidates {n}: ranking needs at least 2")));
        }
        if self.topk == 0 {
            return Err(bad("search.topk 0: must be at least 1".into()));
        }
        Ok(())
    }
}

/// One round of successive halving: how many candidates train, to how many tokens in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub entrants: usize,
    /// Cumulative tokens per entrant at the end of the round.
    pub tokens: u64,
}

/// The rounds for `n` candidates starting at `tokens`: n, ⌈n/2⌉, ... entrants (while more than
/// one), the budget doubling each round.
pub fn rounds(n: usize, tokens: u64) -> Vec<Round> {
    let (mut out, mut k, mut t) = (Vec::new(), n, tokens);
    while k > 1 {
        out.push(Round { entrants: k, tokens: t });
        k = k.div_ceil(2);
        t *= 2;
    }
    out
}

/// Tokens trained in all by the rounds (each entrant from the previous round's budget on).
pub fn total_tokens(rounds: &[Round]) -> u64 {
    let mut prev = 0;
    rounds
        .iter()
        .map(|r| {
            let add = r.entrants as u64 * (r.tokens - prev);
            prev = r.tokens;
            add
        })
        .sum()
}

/// A candidate going into the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its shape, for people (e.g. `24L h576 q9/kv3 ffn1536`).
    pub name: String,
    /// The pruned model (HF directory).
    pub model: PathBuf,
    pub params: usize,
    /// The pruning search's KL to the original without training (None when it has none).
    pub proxy_kl: Option<f64>,
}

/// The ranking's state and result (OUT/rank.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub format: String,
    pub version: u32,
    /// What the ranking is of (settings, rounds, steps, candidates) as one string: a saved
    /// ranking continues only when its key is this run's.
    pub key: String,
    pub settings: RankSettings,
    pub rounds: Vec<Round>,
    pub steps: Vec<u64>,
    pub entries: Vec<Entry>,
    /// Per entry: validation KL before training, then after each round it trained in.
    pub kl: Vec<Vec<f64>>,
    /// The entry that goes on to distillation, once every round is done.
    pub winner: Option<usize>,
}

const FORMAT: &str = "orlik-rank";
const VERSION: u32 = 1;

impl Ranking {
    /// Entrants of round `r`: everyone in round 0, then the better half (least KL after round
    /// r − 1, ties to the earlier entry) of the previous round's.
    pub fn entrants(&self, r: usize) -> Vec<usize> {
        let mut e: Vec<usize> = (0..self.entries.len()).collect();
        for (q, round) in self.rounds.iter().enumerate().take(r) {
            let next = self.rounds.get(q + 1).map_or(1, |x| x.entrants);
            e.sort_by(|&a, &b| self.kl_after(a, q).total_cmp(&self.kl_after(b, q)).then(a.cmp(&b)));
            debug_assert_eq!(e.len(), round.entrants);
            e.truncate(next);
            e.sort_unstable();
        }
        e
    }

    /// KL after round `r` (infinite when not measured: never chosen).
    fn kl_after(&self, i: usize, r: usize) -> f64 {
        self.kl[i].get(r + 1).copied().unwrap_or(f64::INFINITY)
    }

    /// Did training change who is best? True when the winner is not the entry with the least
    /// KL before training.
    pub fn flipped(&self) -> Option<bool> {
        let before = (0..self.entries.len())
            .min_by(|&a, &b| self.kl[a][0].total_cmp(&self.kl[b][0]).then(a.cmp(&b)))?;
        self.winner.map(|w| w != before)
    }

    /// The candidate table (markdown): KL before and after each round.
    pub fn table(&self) -> String {
        let mut t =
            String::from("| candidate | parameters | KL at pruning (search proxy) | val KL before");
        for r in &self.rounds {
            let _ = write!(t, " | after {} tokens", r.tokens);
        }
        t += " | |\n| --- | --- | --- | ---";
        t += &" | ---".repeat(self.rounds.len());
        t += " | --- |\n";
        for (i, e) in self.entries.iter().enumerate() {
            let proxy = e.proxy_kl.map_or("—".into(), |k| format!("{k:.4}"));
            let _ = write!(t, "| {} | {:.2} M | {proxy}", e.name, e.params as f64 / 1e6);
            for r in 0..=self.rounds.len() {
                match self.kl[i].get(r) {
                    Some(k) => _ = write!(t, " | {k:.4}"),
                    None => t += " | —",
                }
            }
            let out = self.kl[i].len().saturating_sub(1);
            let note = if self.winner == Some(i) {
                "**winner**".to_string()
            } else if out > 0 && self.winner.is_some() {
                format!("out after round {out}")
            } else {
                String::new()
            };
            let _ = writeln!(t, " | {note} |");
        }
        t
    }

    /// A paragraph saying what the ranking did and whether it changed the choice.
    pub fn summary(&self) -> String {
        let Some(w) = self.winner else {
            return "ranking not finished".into();
        };
        let by_proxy = (0..self.entries.len())
            .min_by(|&a, &b| {
                let kl = |i: usize| self.entries[i].proxy_kl.unwrap_or(f64::INFINITY);
                kl(a).total_cmp(&kl(b)).then(a.cmp(&b))
            })
            .unwrap_or(0);
        let name = |i: usize| &self.entries[i].name;
        let mut s = format!(
            "{} candidates, {} rounds of successive halving, {} training tokens in all; the winner is {}, ",
            self.entries.len(),
            self.rounds.len(),
            total_tokens(&self.rounds),
            name(w)
        );
        s += &if w == by_proxy {
            "the pruning search's own pick: the ranking did not flip.".to_string()
        } else {
            format!(
                "not the pruning search's pick (least KL without training), {}: the ranking flipped.",
                name(by_proxy)
            )
        };
        if self.flipped() == Some(true) && w == by_proxy {
            s += " (The validation KL before training ranks another candidate first.)";
        }
        s
    }
}

/// Where the rounds read and write, and how.
pub struct RankInputs<'a> {
    pub teacher: &'a Path,
    pub data: &'a [PathBuf],
    pub val: &'a [PathBuf],
    /// OUT: rank.json, rank.md and a run directory per candidate (`cand-N/`).
    pub out: &'a Path,
}

/// How the ranking ended.
pub enum RankOutcome {
    Finished(Box<Ranking>),
    /// The stop flag was raised: a checkpoint of this step of the candidate training then.
    Interrupted {
        step: u64,
    },
}

/// The training settings of the rounds: the distillation's, with the rounds' budget, a constant
/// learning rate after warmup (pausing between rounds changes nothing), the teacher's top-k, no
/// periodic validation (each round ends with one).
pub fn round_config(
    base: &TrainConfig,
    s: &RankSettings,
    rounds: &[Round],
) -> Result<(TrainConfig, Vec<u64>), DistillError> {
    let mut cfg = base.clone();
    cfg.tokens = None;
    cfg.steps = Some(1);
    let per_step = cfg.tokens_per_step();
    if rounds.first().is_some_and(|r| r.tokens < per_step) {
        return Err(bad(format!(
            "search.rank_by {:?}: fewer tokens than one distillation step ({per_step} = distill.batch x grad_accum x seq_len); give kd:{per_step} or more",
            s.rank_by
        )));
    }
    let steps: Vec<u64> = rounds.iter().map(|r| r.tokens.div_ceil(per_step)).collect();
    cfg.steps = Some(steps.last().copied().unwrap_or(1));
    cfg.schedule = Schedule::Constant;
    cfg.topk = s.topk;
    cfg.eval_every = 0;
    cfg.val_tokens = s.val_tokens;
    cfg.validate()?;
    Ok((cfg, steps))
}

/// The settings that decide the rounds' numbers: `cfg` without the keys a run may change when
/// it resumes (checkpoint and validation intervals, the device).
fn trajectory(cfg: &TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in orlik_train::config::RESUMABLE_KEYS {
            o.remove(*k);
        }
    }
    v
}

/// What a ranking of `n` candidates with distillation settings `base` trains with (for a
/// pipeline's stage fingerprint): the rounds' settings without the keys a run may change when
/// it resumes.
pub fn fingerprint(
    s: &RankSettings,
    base: &TrainConfig,
    n: usize,
) -> Result<serde_json::Value, DistillError> {
    let tokens = s.kd_tokens()?.unwrap_or(0);
    let (cfg, steps) = round_config(base, s, &rounds(n.max(2), tokens.max(1)))?;
    Ok(serde_json::json!({"settings": s, "train": trajectory(&cfg), "steps": steps}))
}

/// Run (or continue) the ranking of `entries` with training settings `base` (the recipe's
/// distillation). `notice` gets one line per candidate and round.
pub fn run(
    s: &RankSettings,
    base: &TrainConfig,
    entries: Vec<Entry>,
    inp: &RankInputs,
    ctl: Control,
    notice: &dyn Fn(&str),
) -> Result<RankOutcome, DistillError> {
    s.validate()?;
    let tokens =
        s.kd_tokens()?.ok_or_else(|| bad("search.rank_by = \"kl\" trains nothing".into()))?;
    if entries.len() < 2 {
        return Err(bad(format!("{} candidate(s): ranking needs at least 2", entries.len())));
    }
    let mut plan = rounds(entries.len(), tokens);
    let (cfg, steps) = round_config(base, s, &plan)?;
    // The budgets as trained: whole steps.
    for (r, &n) in plan.iter_mut().zip(&steps) {
        r.tokens = n * cfg.tokens_per_step();
    }
    let key = serde_json::to_string(&(s, &plan, &steps, &entries, trajectory(&cfg)))
        .map_err(|e| bad(format!("internal: the ranking does not serialise: {e}")))?;
    std::fs::create_dir_all(inp.out)
        .map_err(|e| orlik_io::IoError::Io { path: inp.out.into(), source: e })?;
    let state_path = inp.out.join("rank.json");
    let fresh = Ranking {
        format: FORMAT.into(),
        version: VERSION,
        key,
        settings: s.clone(),
        rounds: plan,
        steps,
        kl: vec![Vec::new(); entries.len()],
        entries,
        winner: None,
    };
    // The same ranking continues; anything else starts over, its candidates' runs removed.
    let saved = std::fs::read(&state_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut st = match saved {
        Some(old @ Ranking { .. }) if old.key == fresh.key => old,
        _ => {
            for i in 0..fresh.entries.len() {
                let d = cand_dir(inp.out, i);
                if d.exists() {
                    std::fs::remove_dir_all(&d)
                        .map_err(|e| orlik_io::IoError::Io { path: d, source: e })?;
                }
            }
            fresh
        }
    };
    let save = |st: &Ranking| -> Result<(), DistillError> {
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| bad(e.to_string()))?;
        Ok(orlik_io::atomic::write_file_atomically(&state_path, &bytes)?)
    };
    save(&st)?;
    notice(&format!(
        "ranking {} candidates by short distillation: {} rounds ({}), {} tokens in all",
        st.entries.len(),
        st.rounds.len(),
        st.rounds
            .iter()
            .map(|r| format!("{} x {} tokens", r.entrants, r.tokens))
            .collect::<Vec<_>>()
            .join(", "),
        total_tokens(&st.rounds)
    ));
    let teacher = open_teacher(inp.teacher, &st.entries[0].model, &cfg, ctl.memory, notice)?;
    let memo = RefCell::new(Memo { teacher, topk: s.topk, rows: HashMap::new() });
    for r in 0..st.rounds.len() {
        let entrants = st.entrants(r);
        for &i in &entrants {
            if st.kl[i].len() > r + 1 {
                continue; // measured before an interruption
            }
            if ctl.stop.is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
                // where this candidate's run stands: paused after the previous round
                let step = if r == 0 { 0 } else { st.steps[r - 1] };
                return Ok(RankOutcome::Interrupted { step });
            }
            if let Some(step) = train(&mut st, i, r, &cfg, inp, &memo, ctl, &save, notice)? {
                return Ok(RankOutcome::Interrupted { step });
            }
            save(&st)?;
        }
        // The next round reads windows after these: the memo's rows are not needed again.
        memo.borrow_mut().rows.clear();
        // Those that go no further need no checkpoints (disk: up to two checkpoints of weights
        // and AdamW moments per candidate still in).
        let next = if r + 1 < st.rounds.len() { st.entrants(r + 1) } else { Vec::new() };
        for &i in entrants.iter().filter(|i| !next.contains(i)) {
            remove_checkpoints(&cand_dir(inp.out, i))?;
        }
    }
    // The one left after the last round (its better half is one).
    st.winner = st.entrants(st.rounds.len()).first().copied();
    save(&st)?;
    let md = format!("# Candidates ranked after short distillation\n\n{}\n\n{}\n\nKL: KL(teacher ‖ candidate) per token on {} validation tokens, full vocabulary; training on the teacher's top-{} with the tail mass, constant learning rate {} after warmup.\n", st.summary(), st.table(), s.val_tokens, s.topk, cfg.lr);
    orlik_io::atomic::write_file_atomically(&inp.out.join("rank.md"), md.as_bytes())?;
    Ok(RankOutcome::Finished(Box::new(st)))
}

/// A candidate's run directory.
pub fn cand_dir(out: &Path, i: usize) -> PathBuf {
    out.join(format!("cand-{}", i + 1))
}

fn remove_checkpoints(dir: &Path) -> Result<(), DistillError> {
    let ck = dir.join("checkpoints");
    if ck.exists() {
        std::fs::remove_dir_all(&ck).map_err(|e| orlik_io::IoError::Io { path: ck, source: e })?;
    }
    Ok(())
}

/// Train entry `i` to round `r`'s budget and measure its KL (the KL before training first, on
/// its first round). Returns the step when the stop flag interrupted it.
#[allow(clippy::too_many_arguments)]
fn train(
    st: &mut Ranking,
    i: usize,
    r: usize,
    cfg: &TrainConfig,
    inp: &RankInputs,
    memo: &RefCell<Memo>,
    ctl: Control,
    save: &dyn Fn(&Ranking) -> Result<(), DistillError>,
    notice: &dyn Fn(&str),
) -> Result<Option<u64>, DistillError> {
    let e = st.entries[i].clone();
    let out = cand_dir(inp.out, i);
    let resume = out.join("run.json").is_file();
    let inputs: Vec<&Path> = [e.model.as_path(), inp.teacher]
        .into_iter()
        .chain(inp.data.iter().chain(inp.val).map(PathBuf::as_path))
        .collect();
    let dir = RunDir {
        kind: "distill",
        inputs,
        data: inp.data,
        val: inp.val,
        out: &out,
        resume,
        force: !resume,
        save_dtype: None,
    };
    dir.check()?;
    dir.claim()?;
    let student = HfModel::open(&e.model)?;
    let tok = student.tokenizer()?;
    let (train, val) = dir.pack(&tok, &student.config, &e.model, cfg.seq_len)?;
    let weights = student.checkpoint.load_all(candle_core::DType::F32)?;
    let run = serde_json::json!({
        "kind": "rank",
        "student": e.model.display().to_string(),
        "student_sha256": student.content_sha256()?,
        "teacher": inp.teacher.display().to_string(),
        "data_sha256": train.hash(),
        "val_sha256": val.as_ref().map(orlik_train::data::Packed::hash),
    });
    let source = Box::new(Shared { memo, now: Now::Nothing });
    let mut t = Trainer::new(
        cfg.clone(),
        &student.config,
        weights,
        train,
        val,
        Some(source),
        &out,
        run,
        resume,
    )?;
    t.set_quiet(ctl.quiet);
    if let Some(h) = ctl.after_step {
        t.set_after_step(h);
    }
    if st.kl[i].is_empty() {
        if t.state().step != 0 {
            return Err(bad(format!(
                "{}: a run at step {} without its KL before training; remove {} to rank again",
                out.display(),
                t.state().step,
                inp.out.display()
            )));
        }
        st.kl[i].push(val_kl(&mut t, &out)?);
        save(st)?; // a crash in the round keeps it
    }
    let target = st.steps[r];
    let stopped = match t.run_until(ctl.stop, Some(target))? {
        Outcome::Interrupted { step } if step < target => Some(step),
        _ => None,
    };
    if stopped.is_some() {
        return Ok(stopped);
    }
    let kl = val_kl(&mut t, &out)?;
    notice(&format!(
        "round {}: {} after {} tokens: KL {:.4} (before training {:.4})",
        r + 1,
        e.name,
        st.rounds[r].tokens,
        kl,
        st.kl[i][0]
    ));
    st.kl[i].push(kl);
    Ok(None)
}

fn val_kl(t: &mut Trainer, out: &Path) -> Result<f64, DistillError> {
    let row = t.validate()?;
    row.as_ref().and_then(|v| v.get("val_kl")).and_then(serde_json::Value::as_f64).ok_or_else(
        || bad(format!("{}: no validation KL (the ranking needs validation text)", out.display())),
    )
}

/// The teacher, loaded once for every candidate, after the memory check of the rounds'
/// largest run (the first candidate's shape with the teacher beside it).
fn open_teacher(
    teacher: &Path,
    student: &Path,
    cfg: &TrainConfig,
    memory: orlik_train::mem::Gate,
    notice: &dyn Fn(&str),
) -> Result<OnlineTeacher, DistillError> {
    use orlik_train::mem::{check_on, estimate, Plan, Side};
    let hf = HfModel::open(teacher)?;
    let s = HfModel::open(student)?;
    let plan = Plan::lm(cfg, Side::of(&s), Some(Side::frozen(&hf, cfg.teacher_compute_dtype)));
    notice(&check_on(&estimate(&plan), &plan, memory, &cfg.device)?);
    let map = vocab_map((&hf.config, &hf.tokenizer()?), (&s.config, &s.tokenizer()?))?;
    Ok(OnlineTeacher::load(&hf, map, cfg, notice)?.0)
}

/// One training window's teacher rows (seq_len positions, top-k each).
struct Window {
    ids: Vec<u32>,
    logp: Vec<f32>,
    tail: Vec<f32>,
}

/// The teacher's top-k rows of every training window any candidate has read, by window.
struct Memo {
    teacher: OnlineTeacher,
    topk: usize,
    rows: HashMap<usize, Window>,
}

enum Now {
    Nothing,
    /// A training micro-batch: its windows (in the memo) and their length.
    Train(Vec<usize>, usize),
    /// Validation: the teacher's own full-vocabulary rows.
    Val,
}

/// A candidate's view of the shared teacher.
struct Shared<'a> {
    memo: &'a RefCell<Memo>,
    now: Now,
}

impl TeacherSource for Shared<'_> {
    fn prepare(
        &mut self,
        split: Split,
        windows: &[usize],
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<bool, TrainError> {
        let mut m = self.memo.borrow_mut();
        if split == Split::Val {
            m.teacher.topk = 0;
            self.now = Now::Val;
            return m.teacher.prepare(split, windows, ids, b, t);
        }
        // The whole micro-batch through the teacher when any window is new (the first
        // candidate to read it; the others read the same micro-batches).
        if windows.iter().any(|w| !m.rows.contains_key(w)) {
            m.teacher.topk = m.topk;
            m.teacher.prepare(split, windows, ids, b, t)?;
            for (k, &w) in windows.iter().enumerate() {
                let StepRows::TopK { ids, logp, tail, .. } = m.teacher.rows(k * t, t)? else {
                    return Err(TrainError::Teacher("internal: top-k rows expected".into()));
                };
                m.rows.insert(w, Window { ids, logp, tail });
            }
        }
        self.now = Now::Train(windows.to_vec(), t);
        Ok(true)
    }

    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError> {
        let mut m = self.memo.borrow_mut();
        let (windows, t) = match &self.now {
            Now::Val => return m.teacher.rows(start, n),
            Now::Train(w, t) => (w, *t),
            Now::Nothing => return Err(TrainError::Teacher("rows() before prepare()".into())),
        };
        let k = m.topk;
        let (mut ids, mut logp, mut tail) =
            (Vec::with_capacity(n * k), Vec::with_capacity(n * k), Vec::with_capacity(n));
        for row in start..start + n {
            let w = m.rows.get(&windows[row / t]).ok_or_else(|| {
                TrainError::Teacher("internal: a window missing from the memo".into())
            })?;
            let p = row % t;
            let kk = w.ids.len() / t;
            ids.extend_from_slice(&w.ids[p * kk..(p + 1) * kk]);
            logp.extend_from_slice(&w.logp[p * kk..(p + 1) * kk]);
            tail.push(w.tail[p]);
        }
        let k = ids.len() / n.max(1);
        Ok(StepRows::TopK { k, ids, logp, tail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_halve_the_entrants_and_double_the_budget() {
        assert_eq!(
            rounds(4, 100),
            [Round { entrants: 4, tokens: 100 }, Round { entrants: 2, tokens: 200 }]
        );
        let r5 = rounds(5, 10);
        assert_eq!(
            r5.iter().map(|r| (r.entrants, r.tokens)).collect::<Vec<_>>(),
            [(5, 10), (3, 20), (2, 40)]
        );
        // 5·10 + 3·10 + 2·20
        assert_eq!(total_tokens(&r5), 120);
        assert!(rounds(1, 10).is_empty());
    }

    #[test]
    fn rank_by_parses_kl_and_kd_tokens_and_names_the_key_otherwise() {
        let s = |r: &str| RankSettings { rank_by: r.into(), ..RankSettings::default() };
        assert_eq!(s("kl").kd_tokens().unwrap(), None);
        assert_eq!(s("kd:20_000").kd_tokens().unwrap(), Some(20000));
        for b in ["kd", "kd:0", "kd:x", "loss"] {
            let e = s(b).kd_tokens().unwrap_err().to_string();
            assert!(e.starts_with("search.rank_by ") && e.contains("kd:TOKENS"), "{e}");
        }
        let e = RankSettings { rank_by: "kd:10".into(), candidates: 1, ..RankSettings::default() };
        assert!(e.validate().unwrap_err().to_string().contains("search.candidates 1"));
    }

    /// The rounds' fingerprint follows what changes their numbers (learning rate, budget) and
    /// not what they replace (distill.tokens, eval_every) or what a resume may change.
    #[test]
    fn the_fingerprint_ignores_the_distillation_budget_and_resumable_keys() {
        let s = RankSettings { rank_by: "kd:4096".into(), ..RankSettings::default() };
        let base = TrainConfig { tokens: Some(100_000), ..TrainConfig::default() };
        let fp = |c: &TrainConfig, s: &RankSettings| fingerprint(s, c, 4).unwrap();
        let same = [
            TrainConfig { tokens: Some(5_000_000), ..base.clone() },
            TrainConfig { eval_every: 7, save_every: 3, val_tokens: 99, ..base.clone() },
        ];
        for c in &same {
            assert_eq!(fp(c, &s), fp(&base, &s));
        }
        assert_ne!(fp(&TrainConfig { lr: 1e-3, ..base.clone() }, &s), fp(&base, &s));
        let s2 = RankSettings { rank_by: "kd:8192".into(), ..s.clone() };
        assert_ne!(fp(&base, &s2), fp(&base, &s));
        // a first round smaller than one step (8 x 256 tokens) is refused, naming the key
        let tiny = RankSettings { rank_by: "kd:100".into(), ..s };
        let e = fingerprint(&tiny, &base, 4).unwrap_err().to_string();
        assert!(e.contains("search.rank_by \"kd:100\"") && e.contains("kd:2048"), "{e}");
    }

    fn ranking(kl: Vec<Vec<f64>>, proxy: &[f64]) -> Ranking {
        let n = kl.len();
        Ranking {
            format: FORMAT.into(),
            version: VERSION,
            key: String::new(),
            settings: RankSettings::default(),
            rounds: rounds(n, 10),
            steps: vec![1, 2, 4],
            entries: (0..n)
                .map(|i| Entry {
                    name: format!("c{i}"),
                    model: PathBuf::new(),
                    params: 1,
                    proxy_kl: Some(proxy[i]),
                })
                .collect(),
            kl,
            winner: None,
        }
    }

    /// The better half by KL after the round goes on (ties to the earlier entry); a flip is a
    /// winner other than the best before training.
    #[test]
    fn entrants_are_the_better_half_and_a_flip_is_reported() {
        let mut r = ranking(
            vec![
                vec![1.0, 0.5, 0.2],
                vec![2.0, 0.4, 0.3],
                vec![0.9, 0.6],
                vec![3.0, 0.4, 0.1],
                vec![2.5, 0.9],
            ],
            &[0.1, 0.2, 0.3, 0.4, 0.5],
        );
        assert_eq!(r.entrants(0), [0, 1, 2, 3, 4]);
        assert_eq!(r.entrants(1), [0, 1, 3]); // 0.5, 0.4, 0.4 beat 0.6 and 0.9
        r.kl[0].push(0.05);
        r.kl[3].push(0.07);
        assert_eq!(r.entrants(2), [0, 3]);
        r.winner = Some(0);
        // entry 2 had the least KL before training
        assert_eq!(r.flipped(), Some(true));
        assert!(r.summary().contains("did not flip"), "{}", r.summary());
        r.winner = Some(3);
        assert!(r.summary().contains("winner is c3, not the pruning search's pick (least KL without training), c0: the ranking flipped."), "{}", r.summary());
        let t = r.table();
        assert!(
            t.contains("| c3 | 0.00 M | 0.4000 | 3.0000 | 0.4000 | 0.1000 | 0.0700 | **winner** |"),
            "{t}"
        );
        assert!(
            t.contains("| c4 | 0.00 M | 0.5000 | 2.5000 | 0.9000 | — | — | out after round 1 |"),
            "{t}"
        );
    }
}
