//! `orlik compress` / `orlik run`: score → prune → distill → (SFT → DPO → GRPO) → eval → report,
//! each stage writing
//! into OUT and talking to the next through those files:
//!
//!   OUT/scores/ (orlik score) → OUT/pruned/ (orlik prune, HF) → OUT/distill/ (trainer state,
//!   metrics) and OUT/final/ (HF, distilled) → OUT/eval.json → OUT/report.md + PNG charts.
//!
//! Each stage has a fingerprint: sha256 of its settings and of its inputs' fingerprints (the
//! teacher's weights, the data files, the previous stage). OUT/pipeline.json records the
//! fingerprint of every stage started and whether it finished. Re-running skips a finished stage
//! whose fingerprint is unchanged, resumes an interrupted distillation from its checkpoint, and
//! redoes a stage (and so everything after it) whose settings or inputs changed.

use crate::recipe::Recipe;
use crate::{file_err, PipelineError, Ui};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

type Result<T> = std::result::Result<T, PipelineError>;

/// What the caller controls besides the recipe.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// Reuse the unchanged stages of an OUT whose recipe differs.
    pub resume: bool,
    /// Start over: remove OUT (when it is a pipeline run) first.
    pub force: bool,
    /// Raised by the caller's signal handler: the training stage running saves a checkpoint
    /// and the pipeline returns [`Outcome::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// Called after every training step (the interruption tests pause there).
    pub after_step: Option<&'a (dyn Fn(u64) + Sync)>,
    /// What a training stage's estimated peak memory is compared with before it starts.
    pub memory: orlik_train::mem::Gate,
    pub ui: &'a dyn Ui,
}

/// How a pipeline run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every stage done; OUT/report.md written. `table` is the report's main table (markdown).
    Finished { table: String },
    /// Stopped by the stop flag inside a training stage, after a checkpoint at `step`: running
    /// the same recipe again continues there.
    Interrupted { stage: String, step: u64 },
}

/// Why a stage's work returned without finishing.
pub(crate) enum Work {
    Done,
    Interrupted(u64),
}

fn out_err(path: &Path, msg: impl Into<String>) -> PipelineError {
    PipelineError::Output { path: path.to_path_buf(), msg: msg.into() }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(file_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| out_err(path, e.to_string()))
}

const STATE: &str = "pipeline.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageState {
    fingerprint: String,
    done: bool,
    seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    format_version: u32,
    stages: BTreeMap<String, StageState>,
}

fn sha(v: &Value) -> String {
    let mut h = Sha256::new();
    h.update(v.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

pub(crate) fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| out_err(path, e.to_string()))?;
    Ok(orlik_io::atomic::write_file_atomically(path, &bytes)?)
}

/// How OUT relates to this recipe before anything runs.
fn prepare(r: &Recipe, resume: bool, force: bool) -> Result<()> {
    use orlik_io::output::{check, write_marker, Found, Mode};
    let out = &r.output;
    let inputs: Vec<&Path> = std::iter::once(&r.teacher)
        .chain(&r.data)
        .chain(&r.val)
        .chain(&r.eval.texts)
        .chain(&r.eval.mc_tasks)
        .chain(r.trim.iter().flat_map(|t| t.data.iter().chain(&t.keep)))
        .chain(r.align_inputs())
        .map(PathBuf::as_path)
        .collect();
    // A pipeline run of the same recipe continues where it stopped, so an own output is not an
    // error without --force; anything that is not a pipeline run is refused.
    let found = check(out, "compress", &inputs, if force { Mode::Replace } else { Mode::Resume })?;
    if force && found == Found::Own {
        std::fs::remove_dir_all(out).map_err(file_err(out))?;
    } else if found == Found::Own {
        let saved = out.join("recipe.toml");
        if !saved.is_file() {
            return Err(out_err(out, "a pipeline run that stopped before writing recipe.toml; pass --force to start over"));
        }
        let text = std::fs::read_to_string(&saved).map_err(file_err(&saved))?;
        let old = Recipe::parse(&text, &saved.display().to_string(), &[])?;
        let changed = old.differing_keys(r);
        if !changed.is_empty() && !resume {
            return Err(out_err(out, format!(
                "holds another run (recipe differs: {}); pass --resume to reuse its unchanged stages, or --force to start over",
                changed.join("; ")
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(file_err(out))?;
    if found != Found::Own || force {
        write_marker(out, "compress")?;
    }
    Ok(())
}

struct Runner<'a> {
    out: PathBuf,
    state: State,
    ui: &'a dyn Ui,
}

enum Action {
    Skip,
    Resume,
    Fresh,
}

impl<'a> Runner<'a> {
    fn open(out: &Path, ui: &'a dyn Ui) -> Result<Runner<'a>> {
        let p = out.join(STATE);
        let state = if p.is_file() {
            let s: State = read_json(&p)?;
            if s.format_version != FORMAT_VERSION {
                let msg = format!(
                    "format version {} (this orlik writes {FORMAT_VERSION}); use --force",
                    s.format_version
                );
                return Err(out_err(&p, msg));
            }
            s
        } else {
            State { format_version: FORMAT_VERSION, ..State::default() }
        };
        Ok(Runner { out: out.to_path_buf(), state, ui })
    }

    /// Rank 0 keeps the state file (every rank keeps the same state in memory).
    fn save(&self) -> Result<()> {
        if !orlik_dist::is_root() {
            return Ok(());
        }
        write_json(&self.out.join(STATE), &self.state)
    }

    /// Decide what to do with a stage whose result is `product` (a path inside OUT). Under
    /// data parallel rank 0 decides and every rank follows.
    fn action(&self, name: &str, fp: &str, product: &Path) -> Result<Action> {
        let here = match self.state.stages.get(name) {
            Some(s) if s.fingerprint == fp && s.done && product.exists() => Action::Skip,
            Some(s) if s.fingerprint == fp && !s.done => Action::Resume,
            _ => Action::Fresh,
        };
        let w = orlik_dist::world();
        if w.size() == 1 {
            return Ok(here);
        }
        let root = w.rank() == 0;
        let skip = orlik_dist::any(w, root && matches!(here, Action::Skip))
            .map_err(PipelineError::from)?;
        let resume = orlik_dist::any(w, root && matches!(here, Action::Resume))
            .map_err(PipelineError::from)?;
        Ok(if skip {
            Action::Skip
        } else if resume {
            Action::Resume
        } else {
            Action::Fresh
        })
    }

    /// Run one stage: skip it, or mark it started, run `work(resume)`, mark it done. Only a
    /// `resumable` stage (a training stage: checkpoints) continues an interrupted attempt; the
    /// others start again. Returns the step a training stage was interrupted at.
    fn stage(
        &mut self,
        name: &str,
        fp: &str,
        product: &Path,
        resumable: bool,
        work: impl FnOnce(bool) -> Result<Work>,
    ) -> Result<Option<u64>> {
        let act = self.action(name, fp, product)?;
        if let Action::Skip = act {
            self.ui.notice(&format!("== {name}: unchanged, kept ({})", product.display()));
            return Ok(None);
        }
        let interrupted = matches!(act, Action::Resume);
        let resume = interrupted && resumable;
        let how = match (resume, interrupted) {
            (true, _) => ": resuming",
            (false, true) => ": interrupted before, starting again",
            _ => "",
        };
        self.ui.notice(&format!("== {name}{how}"));
        let prior =
            if resume { self.state.stages.get(name).map_or(0.0, |s| s.seconds) } else { 0.0 };
        self.state.stages.insert(
            name.into(),
            StageState { fingerprint: fp.into(), done: false, seconds: prior },
        );
        self.save()?;
        let t = Instant::now();
        let worked = work(resume)
            .map_err(|e| PipelineError::Stage { stage: name.into(), source: Box::new(e) })?;
        let seconds = prior + t.elapsed().as_secs_f64();
        if let Work::Interrupted(step) = worked {
            self.state
                .stages
                .insert(name.into(), StageState { fingerprint: fp.into(), done: false, seconds });
            self.save()?;
            return Ok(Some(step));
        }
        self.state
            .stages
            .insert(name.into(), StageState { fingerprint: fp.into(), done: true, seconds });
        self.save()?;
        self.ui.notice(&format!("== {name}: done in {seconds:.0} s"));
        Ok(None)
    }

    fn seconds(&self) -> BTreeMap<String, f64> {
        self.state.stages.iter().map(|(k, s)| (k.clone(), s.seconds)).collect()
    }
}

/// A stage's fingerprint input with the frozen model's resolved compute dtype added when it is
/// not f32 (a run from before 16-bit inference keeps its fingerprints).
fn with_compute(
    mut fp: serde_json::Value,
    compute: orlik_model::ComputeDtype,
) -> serde_json::Value {
    if !compute.is_f32() {
        fp["compute_dtype"] = json!(compute);
    }
    fp
}

/// `work` on rank 0 while the other ranks wait (a stage that does not run data parallel).
fn on_root(work: impl FnOnce() -> Result<Work>) -> Result<Work> {
    let mut out = Work::Done;
    orlik_dist::on_root(|| -> Result<()> {
        out = work()?;
        Ok(())
    })?;
    Ok(out)
}

/// Refuse a budget the model cannot meet before any work.
fn check_budget(r: &Recipe, teacher: &orlik_model::Config) -> Result<()> {
    if let Some(p) = r.prune.params {
        let total = teacher.param_count();
        let budget = if p <= 1.0 { p * total as f64 } else { p };
        if p.is_nan() || p <= 0.0 || budget >= total as f64 {
            return Err(PipelineError::Recipe(format!(
                "prune.params {p}: a budget of {budget:.0} parameters is not smaller than the model's {total}; give a fraction below 1 (e.g. 0.67) or a smaller count"
            )));
        }
    }
    Ok(())
}

/// Return from `run` when a stage was interrupted.
macro_rules! or_stop {
    ($stage:expr, $e:expr) => {
        if let Some(step) = $e? {
            return Ok(Outcome::Interrupted { stage: $stage.to_string(), step });
        }
    };
}

/// Run the whole pipeline for a resolved recipe (see [`Recipe::resolve`]).
pub fn run(r: &Recipe, o: &Options) -> Result<Outcome> {
    let ui = o.ui;
    let teacher = orlik_io::hfdir::HfModel::open(&r.teacher)?;
    check_budget(r, &teacher.config)?;
    if r.search.kd_tokens()?.is_some() && orlik_dist::world().size() > 1 {
        return Err(PipelineError::Recipe(format!(
            "search.rank_by {:?} runs in one process: run the recipe without mpirun, or rank by \"kl\" here and distil under mpirun afterwards",
            r.search.rank_by
        )));
    }
    let out = r.output.clone();
    // Under data parallel: score, distill and the alignment stages run on every rank, the
    // others on rank 0 while the rest wait; rank 0 writes the pipeline's own files.
    orlik_dist::on_root(|| -> Result<()> {
        prepare(r, o.resume, o.force)?;
        orlik_io::atomic::write_file_atomically(&out.join("recipe.toml"), r.to_toml()?.as_bytes())?;
        orlik_io::atomic::write_file_atomically(
            &out.join("orlik.json"),
            &orlik_io::text::provenance(),
        )?;
        Ok(())
    })?;
    let mut runner = Runner::open(&out, ui)?;

    ui.notice("hashing inputs...");
    let teacher_sha = teacher.content_sha256()?;
    let data_sha = orlik_io::hfdir::sha256_files(&r.data)?;
    let val_sha = orlik_io::hfdir::sha256_files(&r.val)?;
    // How the teacher holds its matrices when scored and when distilled from (resolved: `auto`
    // follows its stored dtype); part of those stages' fingerprints when not f32.
    let stored = teacher.stored_dtypes();
    let (score_compute, teacher_compute) =
        (r.score.compute_dtype.resolve(&stored), r.distill.teacher_compute_dtype.resolve(&stored));
    drop(teacher);

    let (scores, pruned, final_dir) = (out.join("scores"), out.join("pruned"), out.join("final"));
    // The model scored and pruned: the teacher, or its vocabulary-trimmed copy.
    let (base, fp_base) = match &r.trim {
        Some(t) => (out.join("trimmed"), trim(r, t, &teacher_sha, &mut runner)?),
        None => (r.teacher.clone(), teacher_sha.clone()),
    };
    let fp_score = sha(&with_compute(
        json!({"stage": "score", "settings": r.score, "teacher": fp_base, "data": data_sha}),
        score_compute,
    ));
    runner.stage("score", &fp_score, &scores, false, |_| {
        let show = |what: &str, i: usize, n: usize| ui.progress(what, i, n);
        let s = orlik_score::run(&r.score, &base, &r.data, &scores, true, &show)?;
        ui.progress_done();
        ui.print(&s.report);
        ui.notice(&format!("scores written to {}", scores.display()));
        Ok(Work::Done)
    })?;

    let prune_settings = crate::rank::prune_settings(r);
    let fp_prune = sha(
        &json!({"stage": "prune", "settings": prune_settings, "scores": fp_score, "data": data_sha}),
    );
    runner.stage("prune", &fp_prune, &pruned, false, |_| {
        on_root(|| {
            let inputs = orlik_prune::PruneInputs {
                model: &base,
                scores: Some(&scores),
                plan: None,
                data: &r.data,
            };
            let show = |i: usize, n: usize| ui.progress("prune", i, n);
            let p = orlik_prune::run(&prune_settings, &inputs, &pruned, true, &show)?;
            ui.progress_done();
            ui.print(&p.summary(&prune_settings, &base, &pruned));
            Ok(Work::Done)
        })
    })?;

    // Where the optimizer's moments live does not change the result (and a recipe from before
    // the key existed keeps its fingerprint).
    let mut distill_settings = json!(r.distill);
    if let Some(o) = distill_settings.as_object_mut() {
        o.remove("shard_optimizer");
    }
    // With ranking (search.rank_by = "kd:..."), the student is the winner of the search stage.
    let (student, fp_student) = if r.search.kd_tokens()?.is_some() {
        let dir = out.join("search");
        let fp = sha(&with_compute(
            json!({"stage": "search", "rounds": orlik_distill::rank::fingerprint(&r.search, &r.distill, r.search.candidates)?, "pruned": fp_prune, "teacher": teacher_sha, "data": data_sha, "val": val_sha}),
            teacher_compute,
        ));
        or_stop!(
            "search",
            runner.stage("search", &fp, &dir.join("rank.md"), true, |resume| {
                on_root(|| crate::rank::stage(r, o, &base, &pruned, &dir, resume))
            })
        );
        (crate::rank::winner(&dir)?, fp)
    } else {
        (pruned.clone(), fp_prune.clone())
    };
    let fp_distill = sha(&with_compute(
        json!({"stage": "distill", "settings": distill_settings, "pruned": fp_student, "teacher": teacher_sha, "data": data_sha, "val": val_sha}),
        teacher_compute,
    ));
    let run_dir = out.join("distill");
    or_stop!(
        "distill",
        runner.stage("distill", &fp_distill, &final_dir, true, |resume| {
            distill(r, o, &student, &run_dir, &final_dir, resume)
        })
    );

    let aligned = match align_stages(r, o, &mut runner, &final_dir, &fp_distill)? {
        Ok(a) => a,
        Err(stop) => return Ok(stop),
    };

    let mut texts_sha = Vec::new();
    for t in r.eval.texts.iter().chain(r.eval.mc_tasks.iter()) {
        texts_sha.push(orlik_io::hfdir::sha256_files(std::slice::from_ref(t))?);
    }
    let fp_eval = sha(
        &json!({"stage": "eval", "format": crate::report::FORMAT_VERSION, "settings": r.eval, "distill": fp_distill, "texts": texts_sha}),
    );
    let eval_json = out.join("eval.json");
    runner.stage("eval", &fp_eval, &eval_json, false, |_| {
        on_root(|| {
            let mut models = vec![("teacher", &*r.teacher)];
            if r.trim.is_some() {
                models.push(("trimmed", &base));
            }
            models.extend([("pruned", student.as_path()), ("distilled", &final_dir)]);
            write_json(&eval_json, &crate::report::evaluate(r, &models, ui)?)?;
            Ok(Work::Done)
        })
    })?;

    let align_json = out.join("align_eval.json");
    let align_eval = if aligned.is_empty() {
        None
    } else {
        let fps: Vec<&String> = aligned.iter().map(|a| &a.fingerprint).collect();
        let mut held = Vec::new();
        for a in &aligned {
            if let Some(h) = &a.heldout {
                held.push(orlik_io::hfdir::sha256_files(std::slice::from_ref(&h.prompts))?);
            }
        }
        let fp = sha(&json!({"stage": "align-eval", "stages": fps, "heldout": held}));
        runner.stage("align-eval", &fp, &align_json, false, |_| {
            on_root(|| {
                write_json(&align_json, &crate::report::evaluate_alignment(&aligned, ui)?)?;
                Ok(Work::Done)
            })
        })?;
        Some(read_json(&align_json)?)
    };

    if let Some(x) = &r.export {
        // The run's product: the last alignment stage's model, else the distilled one.
        let (model, after) = aligned.last().map_or((final_dir.clone(), fp_distill.clone()), |a| {
            (a.output.clone(), a.fingerprint.clone())
        });
        let fp = sha(&json!({"stage": "export", "settings": x, "after": after}));
        let product = out.join("export.json");
        runner.stage("export", &fp, &product, false, |_| {
            on_root(|| {
                crate::gguf::run(&model, &out, x, ui)?;
                Ok(Work::Done)
            })
        })?;
    }
    if !orlik_dist::is_root() {
        return Ok(Outcome::Finished { table: String::new() });
    }

    let ev: crate::report::Eval = read_json(&eval_json)?;
    let table = crate::report::write(&out, r, &ev, align_eval.as_ref(), &runner.seconds())?;
    Ok(Outcome::Finished { table })
}

/// The trim stage into OUT/trimmed/; returns its fingerprint.
fn trim(
    r: &Recipe,
    t: &crate::TrimSettings,
    teacher_sha: &str,
    runner: &mut Runner,
) -> Result<String> {
    let dir = r.output.join("trimmed");
    let keep = match &t.keep {
        Some(k) => Some(orlik_io::hfdir::sha256_files(std::slice::from_ref(k))?),
        None => None,
    };
    let text = orlik_io::hfdir::sha256_files(&t.data)?;
    // The texts by content (not by path: moved files trim the same).
    let fp = sha(
        &json!({"stage": "trim", "min_count": t.min_count, "teacher": teacher_sha, "text": text, "keep": keep}),
    );
    let ui = runner.ui;
    runner.stage("trim", &fp, &dir, false, |_| {
        on_root(|| {
            let a = orlik_prune::trim::TrimArgs {
                model: r.teacher.clone(),
                data: t.data.clone(),
                min_count: t.min_count,
                keep: t.keep.clone(),
                output: dir.clone(),
                force: true,
            };
            ui.print(&orlik_prune::trim::run(&a)?);
            Ok(Work::Done)
        })
    })?;
    Ok(fp)
}

/// The training loop's controls for a stage.
pub(crate) fn control<'a>(o: &Options<'a>) -> orlik_train::lm::Control<'a> {
    orlik_train::lm::Control {
        quiet: false,
        stop: o.stop,
        after_step: o.after_step,
        memory: o.memory,
        reduce: None,
        pause_at: None,
    }
}

/// The distillation stage: the pruned model from the teacher, into OUT/distill/, its final
/// model moved to OUT/final/.
fn distill(
    r: &Recipe,
    o: &Options,
    pruned: &Path,
    run_dir: &Path,
    final_dir: &Path,
    resume: bool,
) -> Result<Work> {
    let resume = resume && run_dir.join("run.json").is_file();
    orlik_dist::on_root(|| -> Result<()> {
        if final_dir.exists() {
            std::fs::remove_dir_all(final_dir).map_err(file_err(final_dir))?;
        }
        Ok(())
    })?;
    let inputs: Vec<&Path> = [pruned, &r.teacher]
        .into_iter()
        .chain(r.data.iter().chain(&r.val).map(PathBuf::as_path))
        .collect();
    let dir = orlik_train::lm::RunDir {
        kind: "distill",
        inputs,
        data: &r.data,
        val: &r.val,
        out: run_dir,
        resume,
        force: !resume,
        save_dtype: None,
    };
    let teachers = orlik_distill::run::Teachers { model: Some(&r.teacher), cache: None };
    let ctl = control(o);
    let notice = |m: &str| o.ui.notice(m);
    let f = orlik_distill::run::run(r.distill.clone(), pruned, teachers, &dir, ctl, &notice)?;
    if let orlik_train::Outcome::Interrupted { step } = f.outcome {
        return Ok(Work::Interrupted(step));
    }
    o.ui.print(&f.summary());
    // The distilled model is the run's product: OUT/final/, beside its training record.
    orlik_dist::on_root(|| -> Result<()> {
        let moved = run_dir.join("final");
        std::fs::rename(&moved, final_dir).map_err(file_err(&moved))?;
        Ok(())
    })?;
    Ok(Work::Done)
}

/// One alignment stage that ran: what the report measures before and after it.
pub struct Aligned {
    pub name: &'static str,
    /// The model it started from and the one it wrote.
    pub input: PathBuf,
    pub output: PathBuf,
    pub fingerprint: String,
    pub heldout: Option<orlik_align::stage::Heldout>,
    /// Training metrics (key, first quarter, last quarter) from its metrics.jsonl.
    pub run_dir: PathBuf,
}

/// SFT → DPO → GRPO, each when the recipe has its section, each on the previous stage's model
/// (the first on the distilled one), each a resumable stage of its own. `Err(outcome)` when one
/// was interrupted.
fn align_stages(
    r: &Recipe,
    o: &Options,
    runner: &mut Runner,
    distilled: &Path,
    fp_distill: &str,
) -> Result<std::result::Result<Vec<Aligned>, Outcome>> {
    use orlik_align::stage::{dpo, grpo, sft, AlignOutcome, AlignRun, Heldout};
    type Go<'a> = Box<dyn Fn(&AlignRun) -> Result<AlignOutcome> + 'a>;
    let mut stages: Vec<(&'static str, Value, &PathBuf, &Option<Heldout>, Go)> = Vec::new();
    if let Some(s) = &r.sft {
        stages.push(("sft", json!(s), &s.data, &s.heldout, Box::new(|a| Ok(sft(s, a)?))));
    }
    if let Some(s) = &r.dpo {
        stages.push(("dpo", json!(s), &s.data, &s.heldout, Box::new(|a| Ok(dpo(s, a)?))));
    }
    if let Some(s) = &r.grpo {
        stages.push(("grpo", json!(s), &s.prompts, &s.heldout, Box::new(|a| Ok(grpo(s, a)?))));
    }
    let mut done = Vec::new();
    let (mut model, mut prev) = (distilled.to_path_buf(), fp_distill.to_string());
    for (name, settings, data, heldout, go) in stages {
        let data_sha = orlik_io::hfdir::sha256_files(std::slice::from_ref(data))?;
        let fp =
            sha(&json!({"stage": name, "settings": settings, "after": prev, "data": data_sha}));
        let dir = r.output.join(name);
        let product = dir.join("final");
        let input = model.clone();
        let stopped = runner.stage(name, &fp, &product, true, |resume| {
            let run = AlignRun {
                model: &input,
                out: &dir,
                resume: resume && dir.join("run.json").is_file(),
                force: !(resume && dir.join("run.json").is_file()),
                save_dtype: None,
                ctl: control(o),
                notice: &|m| o.ui.notice(m),
            };
            let a = go(&run)?;
            if let orlik_train::Outcome::Interrupted { step } = a.outcome {
                return Ok(Work::Interrupted(step));
            }
            o.ui.print(&a.summary());
            Ok(Work::Done)
        })?;
        if let Some(step) = stopped {
            return Ok(Err(Outcome::Interrupted { stage: name.into(), step }));
        }
        done.push(Aligned {
            name,
            input,
            output: product.clone(),
            fingerprint: fp.clone(),
            heldout: heldout.clone(),
            run_dir: dir,
        });
        model = product;
        prev = fp;
    }
    Ok(Ok(done))
}
