//! The search stage between prune and distill (recipe `search.rank_by = "kd:TOKENS"`): prune's
//! best `search.candidates` shapes (by KL to the original, from OUT/pruned/candidates.json) are
//! sliced from the teacher into OUT/search/models/, ranked by short distillation
//! (`orlik_distill::rank`, successive halving) into OUT/search/, and the winner's pruned model
//! is the student the distill stage starts from. Pruning itself stays free of training.

use crate::recipe::Recipe;
use crate::run::{control, Options, Work};
use crate::{file_err, PipelineError};
use orlik_distill::rank::{Entry, RankInputs, RankOutcome, Ranking};
use serde_json::Value;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, PipelineError>;

/// The prune settings the pipeline runs with: with ranking, the plans of as many candidates as
/// the ranking takes go into candidates.json.
pub(crate) fn prune_settings(r: &Recipe) -> orlik_prune::PruneSettings {
    let mut p = r.prune.clone();
    if r.search.kd_tokens().ok().flatten().is_some() {
        p.export = p.export.max(r.search.candidates);
    }
    p
}

/// A shape as people read it.
fn shape_name(row: &Value) -> String {
    let g = |k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!("{}L h{} q{}/kv{} ffn{}", g("layers"), g("hidden"), g("heads"), g("kv_heads"), g("ffn"))
}

/// The candidates to rank: the best `search.candidates` of candidates.json that carry a plan,
/// each sliced from the teacher (once: a model already written is kept).
fn entries(r: &Recipe, base: &Path, pruned: &Path, dir: &Path, o: &Options) -> Result<Vec<Entry>> {
    let table_path = pruned.join("candidates.json");
    let text = std::fs::read_to_string(&table_path).map_err(file_err(&table_path))?;
    let table: Value = serde_json::from_str(&text)
        .map_err(|e| PipelineError::Output { path: table_path.clone(), msg: e.to_string() })?;
    let rows: Vec<&Value> = table
        .get("candidates")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|c| c.get("plan").is_some()).collect())
        .unwrap_or_default();
    let rows = &rows[..rows.len().min(r.search.candidates)];
    if rows.len() < 2 {
        return Err(PipelineError::Recipe(format!(
            "search.rank_by {:?}: the pruning search shortlisted {} shape(s) with a plan in {}: nothing to rank; widen prune.tolerance or prune.axes, or set search.rank_by = \"kl\"",
            r.search.rank_by,
            rows.len(),
            table_path.display()
        )));
    }
    let models = dir.join("models");
    std::fs::create_dir_all(&models).map_err(file_err(&models))?;
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let model = models.join(format!("cand-{}", i + 1));
        if !model.join("config.json").is_file() {
            let plan = models.join(format!("cand-{}.plan.json", i + 1));
            let bytes = serde_json::to_vec_pretty(&row["plan"]).unwrap_or_default();
            orlik_io::atomic::write_file_atomically(&plan, &bytes)?;
            let settings = orlik_prune::PruneSettings {
                max_shard_bytes: r.prune.max_shard_bytes,
                ..Default::default()
            };
            let inputs = orlik_prune::PruneInputs {
                model: base,
                scores: None,
                plan: Some(&plan),
                data: &r.data,
            };
            let show =
                |k: usize, n: usize| o.ui.progress(&format!("slice candidate {}", i + 1), k, n);
            orlik_prune::run(&settings, &inputs, &model, true, &show)?;
            o.ui.progress_done();
        }
        out.push(Entry {
            name: shape_name(row),
            model,
            params: row.get("params").and_then(Value::as_u64).unwrap_or(0) as usize,
            proxy_kl: row.get("kl").and_then(Value::as_f64),
        });
    }
    Ok(out)
}

/// Run (or continue, with `resume`) the ranking into `dir`; the candidates are cut from `base`
/// (the teacher, or its trimmed copy).
pub(crate) fn stage(
    r: &Recipe,
    o: &Options,
    base: &Path,
    pruned: &Path,
    dir: &Path,
    resume: bool,
) -> Result<Work> {
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(file_err(dir))?;
    }
    let list = entries(r, base, pruned, dir, o)?;
    let inputs = RankInputs { teacher: &r.teacher, data: &r.data, val: &r.val, out: dir };
    let notice = |m: &str| o.ui.notice(m);
    match orlik_distill::rank::run(&r.search, &r.distill, list, &inputs, control(o), &notice)? {
        RankOutcome::Interrupted { step } => Ok(Work::Interrupted(step)),
        RankOutcome::Finished(st) => {
            o.ui.print(&format!("{}\n{}", st.summary(), st.table()));
            Ok(Work::Done)
        }
    }
}

/// The winner's pruned model, from a finished ranking in `dir`.
pub(crate) fn winner(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("rank.json");
    let bytes = std::fs::read(&p).map_err(file_err(&p))?;
    let st: Ranking = serde_json::from_slice(&bytes)
        .map_err(|e| PipelineError::Output { path: p.clone(), msg: e.to_string() })?;
    st.winner.and_then(|w| st.entries.get(w)).map(|e| e.model.clone()).ok_or_else(|| {
        PipelineError::Output { path: p, msg: "the ranking has no winner (not finished)".into() }
    })
}

/// The report's section: rank.md without its title, when there was a ranking.
pub(crate) fn section(out: &Path) -> String {
    let md = std::fs::read_to_string(out.join("search").join("rank.md")).unwrap_or_default();
    match md.split_once('\n') {
        Some((_, body)) if !md.is_empty() => {
            format!("## Candidates ranked after short distillation\n{body}\n")
        }
        _ => String::new(),
    }
}
