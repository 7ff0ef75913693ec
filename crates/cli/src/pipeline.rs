//! `orlik compress` / `orlik run`: score → prune → distill → eval → report, each stage writing
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
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    orlik_io::atomic::write_file_atomically(path, &serde_json::to_vec_pretty(v)?)
        .with_context(|| path.display().to_string())
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
        .map(PathBuf::as_path)
        .collect();
    // A pipeline run of the same recipe continues where it stopped, so an own output is not an
    // error without --force; anything that is not a pipeline run is refused.
    let found = check(out, "compress", &inputs, if force { Mode::Replace } else { Mode::Resume })?;
    if force && found == Found::Own {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    } else if found == Found::Own {
        let saved = out.join("recipe.toml");
        if !saved.is_file() {
            bail!("{}: a pipeline run that stopped before writing recipe.toml; pass --force to start over", out.display());
        }
        let text = std::fs::read_to_string(&saved)?;
        let old = Recipe::parse(&text, &saved.display().to_string(), &[])?;
        let changed = old.differing_keys(r);
        if !changed.is_empty() && !resume {
            bail!(
                "{} holds another run (recipe differs: {}); pass --resume to reuse its unchanged stages, or --force to start over",
                out.display(),
                changed.join("; ")
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    if found != Found::Own || force {
        write_marker(out, "compress")?;
    }
    Ok(())
}

struct Runner {
    out: PathBuf,
    state: State,
}

enum Action {
    Skip,
    Resume,
    Fresh,
}

impl Runner {
    fn open(out: &Path) -> Result<Runner> {
        let p = out.join(STATE);
        let state = if p.is_file() {
            let s: State = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| p.display().to_string())?;
            if s.format_version != FORMAT_VERSION {
                bail!(
                    "{}: format version {} (this orlik writes {FORMAT_VERSION}); use --force",
                    p.display(),
                    s.format_version
                );
            }
            s
        } else {
            State { format_version: FORMAT_VERSION, ..State::default() }
        };
        Ok(Runner { out: out.to_path_buf(), state })
    }

    fn save(&self) -> Result<()> {
        write_json(&self.out.join(STATE), &self.state)
    }

    /// Decide what to do with a stage whose result is `product` (a path inside OUT).
    fn action(&self, name: &str, fp: &str, product: &Path) -> Action {
        match self.state.stages.get(name) {
            Some(s) if s.fingerprint == fp && s.done && product.exists() => Action::Skip,
            Some(s) if s.fingerprint == fp && !s.done => Action::Resume,
            _ => Action::Fresh,
        }
    }

    /// Run one stage: skip it, or mark it started, run `work(resume)`, mark it done. Only a
    /// `resumable` stage (distillation: checkpoints) continues an interrupted attempt; the others
    /// start again.
    fn stage(
        &mut self,
        name: &str,
        fp: &str,
        product: &Path,
        resumable: bool,
        work: impl FnOnce(bool) -> Result<()>,
    ) -> Result<()> {
        let act = self.action(name, fp, product);
        if let Action::Skip = act {
            eprintln!("== {name}: unchanged, kept ({})", product.display());
            return Ok(());
        }
        let interrupted = matches!(act, Action::Resume);
        let resume = interrupted && resumable;
        eprintln!(
            "== {name}{}",
            if resume {
                ": resuming"
            } else if interrupted {
                ": interrupted before, starting again"
            } else {
                ""
            }
        );
        let prior =
            if resume { self.state.stages.get(name).map_or(0.0, |s| s.seconds) } else { 0.0 };
        self.state.stages.insert(
            name.into(),
            StageState { fingerprint: fp.into(), done: false, seconds: prior },
        );
        self.save()?;
        let t = Instant::now();
        work(resume).with_context(|| format!("stage {name}"))?;
        let seconds = prior + t.elapsed().as_secs_f64();
        self.state
            .stages
            .insert(name.into(), StageState { fingerprint: fp.into(), done: true, seconds });
        self.save()?;
        eprintln!("== {name}: done in {seconds:.0} s");
        Ok(())
    }

    fn seconds(&self) -> BTreeMap<String, f64> {
        self.state.stages.iter().map(|(k, s)| (k.clone(), s.seconds)).collect()
    }
}

/// Refuse a budget the model cannot meet before any work.
fn check_budget(r: &Recipe, teacher: &orlik_model::Config) -> Result<()> {
    if let Some(p) = r.prune.params {
        let total = teacher.param_count();
        let budget = if p <= 1.0 { p * total as f64 } else { p };
        if p.is_nan() || p <= 0.0 || budget >= total as f64 {
            bail!(
                "prune.params {p}: a budget of {budget:.0} parameters is not smaller than the model's {total}; give a fraction below 1 (e.g. 0.67) or a smaller count"
            );
        }
    }
    Ok(())
}

/// Run the whole pipeline for a resolved recipe; prints the final table.
pub fn run(r: Recipe, resume: bool, force: bool) -> Result<()> {
    let teacher = orlik_io::hfdir::HfModel::open(&r.teacher)?;
    check_budget(&r, &teacher.config)?;
    prepare(&r, resume, force)?;
    let out = r.output.clone();
    std::fs::write(out.join("recipe.toml"), r.to_toml()?).context("writing recipe.toml")?;
    std::fs::write(out.join("orlik.json"), crate::commands::provenance())
        .context("writing orlik.json")?;
    let mut runner = Runner::open(&out)?;
    let started = Instant::now();

    eprintln!("hashing inputs...");
    let teacher_sha = teacher.content_sha256()?;
    let data_sha = orlik_io::hfdir::sha256_files(&r.data)?;
    let val_sha = orlik_io::hfdir::sha256_files(&r.val)?;
    drop(teacher);

    let (scores, pruned, final_dir) = (out.join("scores"), out.join("pruned"), out.join("final"));
    let fp_score = sha(
        &json!({"stage": "score", "settings": r.score, "teacher": teacher_sha, "data": data_sha}),
    );
    runner.stage("score", &fp_score, &scores, false, |_| {
        crate::prune_cmd::score(&r.score, &r.teacher, &r.data, &scores, true)
    })?;

    let fp_prune =
        sha(&json!({"stage": "prune", "settings": r.prune, "scores": fp_score, "data": data_sha}));
    runner.stage("prune", &fp_prune, &pruned, false, |_| {
        let inputs = orlik_prune::PruneInputs {
            model: &r.teacher,
            scores: Some(&scores),
            plan: None,
            data: &r.data,
        };
        crate::prune_cmd::prune(&r.prune, &inputs, &pruned, true)
    })?;

    let fp_distill = sha(
        &json!({"stage": "distill", "settings": r.distill, "pruned": fp_prune, "teacher": teacher_sha, "data": data_sha, "val": val_sha}),
    );
    let run_dir = out.join("distill");
    runner.stage("distill", &fp_distill, &final_dir, true, |resume| {
        let resume = resume && run_dir.join("run.json").is_file();
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        let inputs: Vec<&Path> = [&pruned, &r.teacher]
            .into_iter()
            .chain(&r.data)
            .chain(&r.val)
            .map(PathBuf::as_path)
            .collect();
        let dir = orlik_train::lm::RunDir {
            kind: "distill",
            inputs,
            data: &r.data,
            val: &r.val,
            out: &run_dir,
            resume,
            force: !resume,
            save_dtype: None,
        };
        let teachers = orlik_distill::run::Teachers { model: Some(&r.teacher), cache: None };
        let stop = crate::train_cmd::stop_flag();
        let hook = crate::train_cmd::step_delay();
        let ctl =
            crate::train_cmd::control(&stop, hook.as_ref().map(|h| h as &(dyn Fn(u64) + Sync)));
        let started = Instant::now();
        let f = orlik_distill::run::run(r.distill.clone(), &pruned, teachers, &dir, ctl, &|m| {
            eprintln!("{m}")
        })?;
        crate::train_cmd::report_finished(&f, started)?;
        // The distilled model is the run's product: OUT/final/, beside its training record.
        std::fs::rename(run_dir.join("final"), &final_dir)
            .context("moving distill/final to final")?;
        Ok(())
    })?;

    let aligned = align_stages(&r, &mut runner, &final_dir, &fp_distill)?;

    let mut texts_sha = Vec::new();
    for t in r.eval.texts.iter().chain(r.eval.mc_tasks.iter()) {
        texts_sha.push(orlik_io::hfdir::sha256_files(std::slice::from_ref(t))?);
    }
    let fp_eval = sha(
        &json!({"stage": "eval", "format": crate::report::FORMAT_VERSION, "settings": r.eval, "distill": fp_distill, "texts": texts_sha}),
    );
    let eval_json = out.join("eval.json");
    runner.stage("eval", &fp_eval, &eval_json, false, |_| {
        let ev = crate::report::evaluate(
            &r,
            &[("teacher", &r.teacher), ("pruned", &pruned), ("distilled", &final_dir)],
        )?;
        write_json(&eval_json, &ev)
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
            write_json(&align_json, &crate::report::evaluate_alignment(&aligned)?)
        })?;
        Some(
            serde_json::from_slice(&std::fs::read(&align_json)?)
                .context("reading align_eval.json")?,
        )
    };

    let ev: crate::report::Eval =
        serde_json::from_slice(&std::fs::read(&eval_json)?).context("reading eval.json")?;
    let table = crate::report::write(&out, &r, &ev, align_eval.as_ref(), &runner.seconds())?;
    println!("{table}");
    println!(
        "report: {} ({:.0} s this session)",
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
/// (the first on the distilled one), each a resumable stage of its own.
fn align_stages(
    r: &Recipe,
    runner: &mut Runner,
    distilled: &Path,
    fp_distill: &str,
) -> Result<Vec<Aligned>> {
    use orlik_align::stage::{dpo, grpo, sft, AlignRun};
    let mut done = Vec::new();
    let (mut model, mut prev) = (distilled.to_path_buf(), fp_distill.to_string());
    type Go<'a> = Box<dyn Fn(&AlignRun) -> Result<orlik_align::stage::AlignOutcome> + 'a>;
    let mut stages: Vec<(&'static str, Value, PathBuf, Option<orlik_align::stage::Heldout>, Go)> =
        Vec::new();
    if let Some(s) = &r.sft {
        stages.push((
            "sft",
            json!(s),
            s.data.clone(),
            s.heldout.clone(),
            Box::new(|a| Ok(sft(s, a)?)),
        ));
    }
    if let Some(s) = &r.dpo {
        stages.push((
            "dpo",
            json!(s),
            s.data.clone(),
            s.heldout.clone(),
            Box::new(|a| Ok(dpo(s, a)?)),
        ));
    }
    if let Some(s) = &r.grpo {
        let go: Go = Box::new(|a| Ok(grpo(s, a)?));
        stages.push(("grpo", json!(s), s.prompts.clone(), s.heldout.clone(), go));
    }
    for (name, settings, data, heldout, go) in stages {
        let data_sha = orlik_io::hfdir::sha256_files(std::slice::from_ref(&data))?;
        let fp =
            sha(&json!({"stage": name, "settings": settings, "after": prev, "data": data_sha}));
        let dir = r.output.join(name);
        let product = dir.join("final");
        let input = model.clone();
        runner.stage(name, &fp, &product, true, |resume| {
            let resume = resume && dir.join("run.json").is_file();
            let stop = crate::train_cmd::stop_flag();
            let hook = crate::train_cmd::step_delay();
            let hook = hook.as_ref().map(|h| h as &(dyn Fn(u64) + Sync));
            let run = AlignRun {
                model: &input,
                out: &dir,
                resume,
                force: !resume,
                save_dtype: None,
                ctl: crate::train_cmd::control(&stop, hook),
                notice: &|m| eprintln!("{m}"),
            };
            let o = go(&run)?;
            if let orlik_train::Outcome::Interrupted { step } = o.outcome {
                eprintln!("stopped at step {step}; continue with the same command and --resume");
                std::process::exit(130);
            }
            Ok(())
        })?;
        done.push(Aligned {
            name,
            input,
            output: product.clone(),
            fingerprint: fp.clone(),
            heldout,
            run_dir: dir,
        });
        model = product;
        prev = fp;
    }
    Ok(done)
}
