//! The compression recipe: every option of every stage of `orlik compress` / `orlik run`, one
//! serde struct per stage with documented defaults. Unknown keys and wrong types are errors that
//! name the key; the resolved recipe (defaults filled in, paths absolute) is saved as
//! OUT/recipe.toml, which `orlik run` accepts as it is.

use crate::PipelineError;
use orlik_train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, PipelineError>;

fn bad(msg: impl Into<String>) -> PipelineError {
    PipelineError::Recipe(msg.into())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The model to compress: an HF directory (config.json + *.safetensors + tokenizer.json).
    pub teacher: PathBuf,
    /// Output directory of the run.
    #[serde(default)]
    pub output: PathBuf,
    /// Training text: scoring calibration (first paragraphs), the pruning proxy (last
    /// paragraphs) and distillation. Default: the project's Polish corpus, train.txt.
    #[serde(default)]
    pub data: Vec<PathBuf>,
    /// Validation text: in-loop validation of distillation and the eval stage's default texts.
    /// Default: the project's Polish corpus, valid-small.txt.
    #[serde(default)]
    pub val: Vec<PathBuf>,
    /// Vocabulary trimming before scoring (`orlik trim-vocab`): the model keeps the tokens of
    /// `trim.data` (default: `data`), and the trimmed model is what is scored, pruned and
    /// distilled, from the original teacher (its logits at the kept tokens). Absent: no trim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trim: Option<TrimSettings>,
    #[serde(default)]
    pub score: orlik_score::ScoreSettings,
    #[serde(default)]
    pub prune: orlik_prune::PruneSettings,
    /// How the candidate that goes on to distillation is chosen: `rank_by = "kl"` (prune's
    /// pick, the least KL to the original without training; default) or `"kd:TOKENS"` (prune's
    /// best `candidates` each distilled for TOKENS tokens, the better half for as many again,
    /// until one is left: Minitron's practice). Left out of the saved recipe when default.
    #[serde(default, skip_serializing_if = "is_default_search")]
    pub search: orlik_distill::rank::RankSettings,
    /// Distillation settings: the keys of `orlik distill --config` (forward KL, T = 1, no CE by
    /// default). Pipeline defaults: tokens 100,000, validation and a checkpoint every 10 steps on
    /// 8192 validation tokens.
    #[serde(default = "distill_defaults")]
    pub distill: TrainConfig,
    #[serde(default)]
    pub eval: orlik_eval::suite::SuiteSettings,
    /// Alignment after distillation, as Bielik-Minitron did (SFT → DPO-P → GRPO): each section
    /// is optional and runs, in that order, on the previous stage's model (the first on the
    /// distilled one) into OUT/sft/, OUT/dpo/, OUT/grpo/. Keys as `orlik sft|dpo|grpo`'s flags
    /// (`data`, `loss`, `beta`...), the optimiser's under `[sft.train]` etc., and an optional
    /// `[sft.heldout]` (prompts, reward) measured before and after the stage in the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft: Option<orlik_align::stage::SftSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<orlik_align::stage::DpoSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<orlik_align::stage::GrpoSettings>,
    /// GGUF export of the run's final model (the last alignment stage's, else final/) as
    /// OUT/final.gguf, for llama.cpp / Ollama / LM Studio: `[export] gguf = "q8_0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<orlik_io::export::ExportSettings>,
}

pub const DEFAULT_TOKENS: u64 = 100_000;

/// The recipe's `[trim]` section (the flags of `orlik trim-vocab`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrimSettings {
    /// Text whose tokens are kept (with every special and byte token and the BPE merge
    /// closure). Default: the recipe's `data`.
    pub data: Vec<PathBuf>,
    /// Keep a token the text uses at least this many times. Default 1 (0 is read as 1).
    pub min_count: u64,
    /// A file of extra token strings to keep, one a line.
    pub keep: Option<PathBuf>,
}

fn is_default_search(s: &orlik_distill::rank::RankSettings) -> bool {
    *s == orlik_distill::rank::RankSettings::default()
}

fn distill_defaults() -> TrainConfig {
    TrainConfig {
        tokens: Some(DEFAULT_TOKENS),
        eval_every: 10,
        save_every: 10,
        val_tokens: 8192,
        ..TrainConfig::default()
    }
}

/// Line of a byte offset, for error messages.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Parse a `--set key=value` value as TOML (numbers, booleans, arrays, quoted strings); anything
/// that is not TOML is taken as a bare string (paths, names).
fn set_value(v: &str) -> toml::Value {
    match format!("v = {v}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

/// Apply `key=value` edits (dotted keys reach into the stage tables).
pub fn apply_sets(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            bad(format!("--set {s:?}: expected key=value (e.g. prune.params=0.5)"))
        })?;
        let path: Vec<&str> = k.trim().split('.').collect();
        let mut t = &mut *table;
        for p in &path[..path.len() - 1] {
            t = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| bad(format!("--set {k}: {p} is not a table")))?;
        }
        t.insert(path[path.len() - 1].to_string(), set_value(v.trim()));
    }
    Ok(())
}

impl Recipe {
    /// Parse a recipe (TOML text) with `--set` edits applied; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, sets: &[String]) -> Result<Recipe> {
        let report = |e: toml::de::Error, src: &str, what: &str| {
            // The line number, and the key written on that line (serde's message names only the type).
            let at = e
                .span()
                .map(|r| {
                    let n = line_of(src, r.start);
                    let key = src
                        .lines()
                        .nth(n - 1)
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| k.trim())
                        .filter(|k| !k.is_empty());
                    format!(" (line {n}{})", key.map(|k| format!(", key {k}")).unwrap_or_default())
                })
                .unwrap_or_default();
            bad(format!("{what}{at}: {}", e.message().trim().replace('\n', " ")))
        };
        let mut table: toml::Table = text.parse().map_err(|e| report(e, text, origin))?;
        // Errors located in the user's own text first (line numbers), then the defaults and edits.
        let _: Recipe = toml::from_str(text).map_err(|e| report(e, text, origin))?;
        // The pipeline's distillation defaults sit under whatever [distill] keys the recipe sets
        // (a budget given as steps replaces the default token budget).
        let mut merged = toml::Table::try_from(distill_defaults()).map_err(ser)?;
        if let Some(user) = table.get("distill").and_then(toml::Value::as_table) {
            if user.contains_key("steps") || user.contains_key("tokens") {
                merged.remove("tokens");
            }
            merged.extend(user.clone());
        }
        table.insert("distill".into(), toml::Value::Table(merged));
        apply_sets(&mut table, sets)?;
        let edited = toml::to_string(&table).map_err(ser)?;
        let what =
            if sets.is_empty() { origin.to_string() } else { format!("{origin} after --set") };
        toml::from_str(&edited).map_err(|e| report(e, &edited, &what))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(ser)
    }

    /// Fill defaults that depend on the machine (the corpus location), make paths absolute and
    /// check every input exists and every setting is valid, before any work.
    pub fn resolve(mut self) -> Result<Recipe> {
        let cache = std::env::var_os("ORLIK_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orlik")))
            .unwrap_or_else(|| PathBuf::from(".cache/orlik"));
        let corpus = cache.join("corpus-pl");
        if self.data.is_empty() {
            self.data = vec![corpus.join("train.txt")];
        }
        if self.val.is_empty() {
            self.val = vec![corpus.join("valid-small.txt")];
        }
        if self.eval.texts.is_empty() {
            self.eval.texts = self.val.clone();
        }
        if let Some(t) = self.trim.as_mut().filter(|t| t.data.is_empty()) {
            t.data = self.data.clone();
        }
        if self.output.as_os_str().is_empty() {
            return Err(bad(
                "no output directory: give -o DIR (or output = \"DIR\" in the recipe)",
            ));
        }
        let abs = |p: &Path| -> Result<PathBuf> {
            let p = expand_home(p);
            let cwd = std::env::current_dir().map_err(crate::file_err(Path::new(".")))?;
            Ok(if p.is_absolute() { p } else { cwd.join(p) })
        };
        self.teacher = abs(&self.teacher)?;
        self.output = abs(&self.output)?;
        for list in [&mut self.data, &mut self.val, &mut self.eval.texts] {
            for p in list.iter_mut() {
                *p = abs(p)?;
            }
        }
        if let Some(t) = &mut self.trim {
            for p in t.data.iter_mut().chain(t.keep.iter_mut()) {
                *p = abs(p)?;
            }
        }
        if let Some(m) = &self.eval.mc_tasks {
            self.eval.mc_tasks = Some(abs(m)?);
        }
        if self.grpo.as_ref().is_some_and(|g| g.prompts.as_os_str().is_empty()) {
            return Err(bad(
                "grpo: give prompts = \"FILE.jsonl\" (prompts with answers for the rewards)",
            ));
        }
        for p in self.align_inputs_mut() {
            *p = abs(p)?;
        }
        let align: Vec<PathBuf> = self.align_inputs().into_iter().cloned().collect();
        let inputs = self
            .data
            .iter()
            .chain(&self.val)
            .chain(&self.eval.texts)
            .chain(self.eval.mc_tasks.iter())
            .chain(self.trim.iter().flat_map(|t| t.data.iter().chain(&t.keep)))
            .chain(&align);
        for p in inputs {
            if !p.is_file() {
                let hint = if p.starts_with(&corpus) {
                    " (fetch the Polish corpus with `bash scripts/fetch-assets.sh corpus`)"
                } else {
                    ""
                };
                return Err(bad(format!("{}: no such file{hint}", p.display())));
            }
        }
        if !self.teacher.join("config.json").is_file() {
            let msg =
                format!("{}: not an HF model directory (no config.json)", self.teacher.display());
            return Err(bad(msg));
        }
        self.score.validate(&|k| format!("score.{k}"))?;
        let p = &self.prune;
        p.validate(&|k| format!("prune.{k}"))?;
        let dims = [p.layers, p.hidden, p.heads, p.kv_heads, p.ffn].iter().any(Option::is_some);
        match (p.params, dims) {
            (None, false) => return Err(bad("prune: give a budget (prune.params, e.g. 0.67 or 90000000) or dimensions (prune.layers, hidden, heads, kv_heads, ffn)")),
            (Some(_), true) => return Err(bad("prune: give either prune.params or explicit dimensions, not both")),
            _ => {}
        }
        self.search.validate()?;
        if self.search.kd_tokens()?.is_some() {
            if p.params.is_none() {
                return Err(bad("search.rank_by = \"kd:...\" ranks the budget search's candidates: give prune.params (a budget) instead of dimensions"));
            }
            if self.search.candidates > p.candidates {
                return Err(bad(format!(
                    "search.candidates {} is more than prune.candidates {} (the shapes the pruning search shortlists): raise prune.candidates or lower search.candidates",
                    self.search.candidates, p.candidates
                )));
            }
        }
        if self.distill.steps.is_none() && self.distill.tokens.is_none() {
            self.distill.tokens = Some(DEFAULT_TOKENS);
        }
        self.distill.validate()?;
        if self.eval.context < 2 || self.eval.agree_context == 0 || self.eval.mc_context < 2 {
            return Err(bad("eval: context, mc_context and agree_context must be at least 2"));
        }
        Ok(self)
    }

    /// The alignment stages' data and held-out files.
    pub fn align_inputs(&self) -> Vec<&PathBuf> {
        let mut v = Vec::new();
        if let Some(s) = &self.sft {
            v.push(&s.data);
            v.extend(s.heldout.as_ref().map(|h| &h.prompts));
        }
        if let Some(s) = &self.dpo {
            v.push(&s.data);
            v.extend(s.heldout.as_ref().map(|h| &h.prompts));
        }
        if let Some(s) = &self.grpo {
            v.push(&s.prompts);
            v.extend(s.heldout.as_ref().map(|h| &h.prompts));
        }
        v
    }

    fn align_inputs_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut v = Vec::new();
        if let Some(s) = &mut self.sft {
            v.push(&mut s.data);
            v.extend(s.heldout.as_mut().map(|h| &mut h.prompts));
        }
        if let Some(s) = &mut self.dpo {
            v.push(&mut s.data);
            v.extend(s.heldout.as_mut().map(|h| &mut h.prompts));
        }
        if let Some(s) = &mut self.grpo {
            v.push(&mut s.prompts);
            v.extend(s.heldout.as_mut().map(|h| &mut h.prompts));
        }
        v
    }

    /// Keys whose values differ between two recipes (dotted, sorted), for refusing to mix runs.
    pub fn differing_keys(&self, other: &Recipe) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(other).unwrap_or_default(),
        );
        orlik_train::config::differing_keys(&a, &b, &[])
    }
}

/// A TOML serialisation failure of orlik's own structs: an internal invariant, said as such.
fn ser(e: impl std::fmt::Display) -> PipelineError {
    bad(format!("internal error: the recipe does not serialise as TOML: {e}"))
}

/// `orlik compress`'s flags: the few things a quick run names; everything else is a default or
/// a `--set` edit.
#[derive(Debug, Clone, Default)]
pub struct Quick {
    pub teacher: PathBuf,
    /// Fraction of the parameters to keep (or a count above 1).
    pub params: f64,
    pub data: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
    pub tokens: Option<u64>,
    pub mc_tasks: Option<PathBuf>,
    /// `--export-gguf TYPE`: OUT/final.gguf in that type.
    pub export_gguf: Option<String>,
    pub output: PathBuf,
}

impl Quick {
    /// The recipe these flags stand for, `sets` applied, resolved.
    pub fn recipe(&self, sets: &[String]) -> Result<Recipe> {
        use toml::Value as V;
        let path = |p: &Path| V::String(p.display().to_string());
        let paths = |v: &[PathBuf]| V::Array(v.iter().map(|p| path(p)).collect());
        let table = |k: &str, v: V| V::Table(toml::Table::from_iter([(k.to_string(), v)]));
        let mut t = toml::Table::new();
        t.insert("teacher".into(), path(&self.teacher));
        t.insert("output".into(), path(&self.output));
        t.insert("data".into(), paths(&self.data));
        t.insert("val".into(), paths(&self.val));
        t.insert("prune".into(), table("params", V::Float(self.params)));
        if let Some(n) = self.tokens {
            let n = i64::try_from(n).map_err(|_| bad(format!("--tokens {n}: too large")))?;
            t.insert("distill".into(), table("tokens", V::Integer(n)));
        }
        if let Some(m) = &self.mc_tasks {
            t.insert("eval".into(), table("mc_tasks", path(m)));
        }
        if let Some(g) = &self.export_gguf {
            t.insert("export".into(), table("gguf", V::String(g.clone())));
        }
        let text = toml::to_string(&t).map_err(ser)?;
        Recipe::parse(&text, "orlik compress", sets)?.resolve()
    }
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(h)) => PathBuf::from(h).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "teacher = \"m\"\noutput = \"o\"\n[prune]\nparams = 0.67\n";

    #[test]
    fn defaults_fill_every_stage_and_sets_override() {
        let r = Recipe::parse(BASE, "r.toml", &[]).unwrap();
        assert_eq!(r.score, orlik_score::ScoreSettings::default());
        assert_eq!(r.distill, distill_defaults());
        let r3 = Recipe::parse(&format!("{BASE}[distill]\nsteps = 5\nlr = 0.001\n"), "r.toml", &[])
            .unwrap();
        assert_eq!(
            (r3.distill.steps, r3.distill.tokens, r3.distill.eval_every, r3.distill.lr),
            (Some(5), None, 10, 0.001)
        );
        assert_eq!(r.prune.params, Some(0.67));
        let sets = [
            "prune.params=0.5".to_string(),
            "distill.lr=1e-3".into(),
            "eval.mc_tasks=a/b.jsonl".into(),
            "score.in_memory=true".into(),
        ];
        let r2 = Recipe::parse(BASE, "r.toml", &sets).unwrap();
        assert_eq!(r2.prune.params, Some(0.5));
        assert_eq!(r2.distill.lr, 1e-3);
        assert_eq!(r2.eval.mc_tasks, Some(PathBuf::from("a/b.jsonl")));
        assert!(r2.score.in_memory && !r.score.in_memory, "streams unless told");
        let d = r.differing_keys(&r2);
        assert!(d.iter().any(|k| k.starts_with("prune.params (0.67 -> 0.5)")), "{d:?}");
        assert_eq!(d.len(), 4, "{d:?}");
        // the saved form parses back to the same recipe
        assert_eq!(Recipe::parse(&r2.to_toml().unwrap(), "saved", &[]).unwrap(), r2);
    }

    /// The frozen models' compute dtype is a key of score, distill (the teacher) and eval;
    /// `auto` (the default) is left out of the saved form, so old recipes save as before.
    #[test]
    fn compute_dtypes_are_recipe_keys() {
        use orlik_model::ComputeDtype as C;
        let sets = [
            "score.compute_dtype=bf16".to_string(),
            "distill.teacher_compute_dtype=f32".into(),
            "eval.compute_dtype=f16".into(),
        ];
        let r = Recipe::parse(BASE, "r.toml", &sets).unwrap();
        assert_eq!(
            (r.score.compute_dtype, r.distill.teacher_compute_dtype, r.eval.compute_dtype),
            (C::Bf16, C::F32, C::F16)
        );
        assert_eq!(Recipe::parse(&r.to_toml().unwrap(), "saved", &[]).unwrap(), r);
        let plain = Recipe::parse(BASE, "r.toml", &[]).unwrap();
        assert_eq!(plain.score.compute_dtype, C::Auto);
        assert!(!plain.to_toml().unwrap().contains("compute_dtype"));
        let e = Recipe::parse(BASE, "r.toml", &["score.compute_dtype=fp8".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fp8") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors_naming_them() {
        let e =
            Recipe::parse(&format!("{BASE}samples = 3\n"), "r.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("r.toml (line 5, key samples)") && e.contains("samples"), "{e}");
        let e = Recipe::parse(BASE, "r.toml", &["distill.lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("after --set") && e.contains("lrr"), "{e}");
        let e =
            Recipe::parse(BASE, "r.toml", &["prune.params=lots".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid type") && e.contains("lots"), "{e}");
        let e = Recipe::parse(BASE, "r.toml", &["noequals".into()]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    /// `[search]` is checked before any work: the rank_by spelling, a budget to search, and no
    /// more candidates to rank than the pruning search shortlists. Default: left out when saved.
    #[test]
    fn search_settings_are_checked_when_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir(t.join("m")).unwrap();
        std::fs::write(t.join("m/config.json"), "{}").unwrap();
        std::fs::write(t.join("d.txt"), "x").unwrap();
        let base = format!(
            "teacher = \"{0}/m\"\noutput = \"{0}/o\"\ndata = [\"{0}/d.txt\"]\nval = [\"{0}/d.txt\"]\n",
            t.display()
        );
        let resolve = |extra: &str, sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Recipe::parse(&format!("{base}{extra}"), "r.toml", &sets).and_then(Recipe::resolve)
        };
        let budget = "[prune]\nparams = 0.5\n";
        let r = resolve(budget, &["search.rank_by=\"kd:1000\""]).unwrap();
        assert_eq!(r.search.kd_tokens().unwrap(), Some(1000));
        assert!(r.to_toml().unwrap().contains("[search]"));
        assert!(!resolve(budget, &[]).unwrap().to_toml().unwrap().contains("[search]"));
        let err = |extra: &str, sets: &[&str]| resolve(extra, sets).unwrap_err().to_string();
        let e = err(budget, &["search.rank_by=kd"]);
        assert!(e.contains("search.rank_by \"kd\"") && e.contains("kd:TOKENS"), "{e}");
        let e = err(budget, &["search.rank_by=\"kd:10\"", "search.candidates=9"]);
        assert!(e.contains("search.candidates 9 is more than prune.candidates 8"), "{e}");
        let e = err("[prune]\nlayers = 2\n", &["search.rank_by=\"kd:10\""]);
        assert!(e.contains("give prune.params"), "{e}");
        let e = err(budget, &["search.rank_by=\"kd:10\"", "search.candidates=1"]);
        assert!(e.contains("search.candidates 1: ranking needs at least 2"), "{e}");
        let e = err(budget, &["search.rounds=2"]);
        assert!(e.contains("rounds"), "{e}");
    }

    #[test]
    fn every_shipped_recipe_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) != Some("toml") {
                continue;
            }
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let r = Recipe::parse(&text, &name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            r.distill.validate().unwrap();
            assert!(r.prune.params.is_some() || r.prune.layers.is_some(), "{name}");
            if name.ends_with("bielik-style.toml") {
                // Bielik-Minitron aligned the distilled model: SFT -> DPO-P -> GRPO
                assert!(r.sft.is_some() && r.grpo.is_some(), "{name}: alignment sections");
                let dpo = r.dpo.as_ref().unwrap();
                assert_eq!(dpo.loss, orlik_align::dpo::DpoLoss::Dpop);
            }
            seen += 1;
        }
        assert!(seen >= 2, "recipes/ holds {seen} recipes");
    }
}
