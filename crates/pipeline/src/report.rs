//! The pipeline's eval stage (teacher, pruned and distilled model measured the same way, speed in
//! one interleaved run) and its report: OUT/eval.json, OUT/report.md with quality.png and
//! speed.png (and their SVGs) beside it, and the distillation curves from OUT/distill/.

use crate::recipe::Recipe;
use crate::{PipelineError, Ui};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub use orlik_eval::suite::{Eval, ModelEval, FORMAT_VERSION};

type Result<T> = std::result::Result<T, PipelineError>;

fn speed_of(m: &ModelEval, what: &str) -> Option<f64> {
    m.speed.iter().find(|(w, _)| w == what).map(|s| s.1)
}

/// Measure every model; the first is the teacher the others are compared with.
pub fn evaluate(r: &Recipe, models: &[(&str, &Path)], ui: &dyn Ui) -> Result<Eval> {
    let show = |what: &str, i: usize, n: usize| ui.progress(what, i, n);
    let ev = orlik_eval::suite::run(&r.eval, models, &|n| ui.notice(&format!("-- {n}")), &show)?;
    ui.progress_done();
    Ok(ev)
}

/// One alignment stage measured: held-out reward of its input and its output model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlignStageEval {
    pub stage: String,
    pub model: String,
    pub heldout: Option<String>,
    pub prompts: usize,
    pub reward_before: Option<f64>,
    pub reward_after: Option<f64>,
    /// (metric, first quarter of training, last quarter)
    pub training: Vec<(String, f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlignEval {
    pub stages: Vec<AlignStageEval>,
}

/// Held-out reward (greedy) before and after every alignment stage that names a held-out set.
pub fn evaluate_alignment(stages: &[crate::run::Aligned], ui: &dyn Ui) -> Result<AlignEval> {
    let mut out = Vec::new();
    for a in stages {
        let (mut before, mut after, mut n) = (None, None, 0);
        if let Some(h) = &a.heldout {
            ui.notice(&format!("-- {}: held-out reward before and after", a.name));
            let show = |i: usize, n: usize| ui.progress("held-out reward", i, n);
            let b = orlik_align::stage::eval_reward(&a.input, h, &show)?;
            let f = orlik_align::stage::eval_reward(&a.output, h, &show)?;
            ui.progress_done();
            (before, after, n) = (Some(b.reward_mean), Some(f.reward_mean), f.n);
        }
        out.push(AlignStageEval {
            stage: a.name.to_string(),
            model: a.output.display().to_string(),
            heldout: a.heldout.as_ref().map(|h| h.prompts.display().to_string()),
            prompts: n,
            reward_before: before,
            reward_after: after,
            training: orlik_align::stage::quarters(&a.run_dir.join("metrics.jsonl"))?,
        });
    }
    Ok(AlignEval { stages: out })
}

/// The report's alignment section (markdown).
fn alignment_section(a: &AlignEval) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Alignment after distillation\n");
    let _ = writeln!(md, "Each stage starts from the previous stage's model (the first from the distilled one). Held-out reward: greedy completions of prompts the stage never trains on, scored by the stage's verifiers (accuracy for 0/1 rewards).\n");
    let _ = writeln!(md, "| stage | held-out reward before → after | training, first → last quarter | model |\n| --- | --- | --- | --- |");
    for s in &a.stages {
        let held = match (s.reward_before, s.reward_after) {
            (Some(b), Some(f)) => format!("{b:.3} → {f:.3} ({} prompts)", s.prompts),
            _ => "— (no heldout set)".into(),
        };
        let tr: Vec<String> =
            s.training.iter().map(|(k, a, b)| format!("{k} {a:.3} → {b:.3}")).collect();
        let _ = writeln!(md, "| {} | {held} | {} | `{}` |", s.stage, tr.join("; "), s.model);
    }
    md.push('\n');
    md
}

fn millions(n: usize) -> String {
    match n {
        0..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// Share of the pruned → teacher gap the distilled model closed (1 = teacher's level).
pub fn gap_closed(teacher: f64, pruned: f64, distilled: f64) -> Option<f64> {
    (pruned - teacher).abs().gt(&1e-12).then(|| (pruned - distilled) / (pruned - teacher))
}

/// Write report.md, quality.png and speed.png; return the main table (markdown).
pub fn write(
    out: &Path,
    r: &Recipe,
    ev: &Eval,
    align: Option<&AlignEval>,
    seconds: &BTreeMap<String, f64>,
) -> Result<String> {
    let ms = &ev.models;
    let t = ms.first().ok_or_else(|| PipelineError::Output {
        path: out.join("eval.json"),
        msg: "no models measured".into(),
    })?;
    let mut tab = String::new();
    let _ = write!(tab, "| |");
    for m in ms {
        let _ = write!(tab, " {} |", m.name);
    }
    let _ = write!(tab, "\n| --- |{}\n", " --- |".repeat(ms.len()));
    let mut row = |label: &str, f: &dyn Fn(&ModelEval) -> String| {
        let _ = write!(tab, "| {label} |");
        for m in ms {
            let _ = write!(tab, " {} |", f(m));
        }
        tab.push('\n');
    };
    row("parameters", &|m| {
        format!(
            "{} ({:.0}%)",
            millions(m.parameters),
            100.0 * m.parameters as f64 / t.parameters as f64
        )
    });
    row("size on disk", &|m| {
        if m.bytes < 10_000_000 {
            format!("{:.1} KB", m.bytes as f64 / 1e3)
        } else {
            format!("{:.0} MB", m.bytes as f64 / 1e6)
        }
    });
    row("layers / hidden / heads / KV heads / MLP", &|m| {
        m.shape.map(|x| x.to_string()).join(" / ")
    });
    let texts: Vec<String> = t.bits_per_byte.keys().filter(|k| *k != "total").cloned().collect();
    for f in &texts {
        row(&format!("bits/byte, {f} (lower is better)"), &|m| {
            m.bits_per_byte.get(f).map_or("—".into(), |b| format!("{b:.4}"))
        });
    }
    let pruned = ms.iter().find(|m| m.name == "pruned");
    let key = if texts.len() == 1 { texts[0].clone() } else { "total".to_string() };
    let closed = |m: &ModelEval| -> String {
        match (
            t.bits_per_byte.get(&key),
            pruned.and_then(|p| p.bits_per_byte.get(&key)),
            m.bits_per_byte.get(&key),
        ) {
            // not for the trimmed model: it comes before pruning, nothing of the gap is its
            (Some(&a), Some(&b), Some(&c)) if m.name != t.name && m.name != "trimmed" => {
                gap_closed(a, b, c).map_or("—".into(), |g| format!("{:.1}%", 100.0 * g))
            }
            _ => "—".into(),
        }
    };
    row(&format!("pruned→teacher gap closed ({key})"), &closed);
    if t.mc.is_some() {
        row("multiple choice accuracy (raw / length-normalised)", &|m| {
            m.mc.as_ref().map_or("—".into(), |x| {
                format!("{:.1}% / {:.1}%", 100.0 * x.accuracy, 100.0 * x.accuracy_norm)
            })
        });
    }
    row("KL(teacher ‖ model), nats/token", &|m| m.kl.map_or("—".into(), |k| format!("{k:.4}")));
    row("top-1 agreement with the teacher", &|m| {
        m.top1.map_or("—".into(), |a| format!("{:.1}%", 100.0 * a))
    });
    for (what, _) in &t.speed {
        row(&format!("{what}, tokens/s (speed-up)"), &|m| match (
            speed_of(m, what),
            speed_of(t, what),
        ) {
            (Some(v), Some(b)) => format!("{v:.1} ({:.2}x)", v / b),
            _ => "—".into(),
        });
    }

    // quality vs parameters: each model a labelled point, the teacher's level a dashed line
    let bpb = |m: &ModelEval| m.bits_per_byte.get(&key).copied().unwrap_or(f64::NAN);
    let quality = orlik_plot::Lines {
        title: format!("Quality against size (bits/byte on {key}; lower is better)"),
        x_label: "parameters (millions)".into(),
        y_label: "bits per byte".into(),
        series: vec![orlik_plot::Series {
            name: "models".into(),
            points: ms.iter().map(|m| (m.parameters as f64 / 1e6, bpb(m))).collect(),
            mark: orlik_plot::Mark::Points,
            labels: ms.iter().map(|m| format!("{} ({:.3})", m.name, bpb(m))).collect(),
        }],
        reference: Some((format!("teacher ({:.3})", bpb(t)), bpb(t))),
    };
    quality.save(&out.join("quality.png"))?;
    let has_speed = !t.speed.is_empty();
    if has_speed {
        orlik_plot::Bars {
            title: "Speed on this machine (higher is better)".into(),
            x_label: "measurement".into(),
            y_label: "tokens / s".into(),
            categories: t.speed.iter().map(|(w, _)| w.clone()).collect(),
            series: ms
                .iter()
                .map(|m| {
                    let v = t.speed.iter().map(|(w, _)| speed_of(m, w).unwrap_or(f64::NAN));
                    (m.name.clone(), v.collect())
                })
                .collect(),
            values_on_bars: true,
        }
        .save(&out.join("speed.png"))?;
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Compression report\n");
    let _ = writeln!(
        md,
        "The **teacher** `{}` was scored on {} calibration windows of the training text, **pruned** by \
         activation importance (Minitron) to {}, and **distilled** from the teacher (logit-only knowledge \
         distillation, {} on {} tokens). All three are then measured the same way.\n",
        r.teacher.display(),
        r.score.samples,
        r.prune.params.map_or("the dimensions in the recipe".to_string(), |p| if p <= 1.0 { format!("{:.0}% of its parameters", 100.0 * p) } else { format!("{p:.0} parameters") }),
        format!("{:?}", r.distill.loss).to_lowercase(),
        r.distill.tokens.map_or_else(|| format!("{} steps of", r.distill.steps.unwrap_or(0)), |n| n.to_string()),
    );
    if let Some(t) = &r.trim {
        let files: Vec<String> = t.data.iter().map(|p| format!("`{}`", p.display())).collect();
        let _ = writeln!(
            md,
            "Before scoring, the teacher's vocabulary was **trimmed** to the tokens of {} (with every special and byte token; `trimmed/trim.json` has the counts): the other models keep those tokens only, and distillation took the original teacher's logits at them. KL and top-1 agreement are on the student's tokens.\n",
            files.join(", ")
        );
    }
    let _ = writeln!(md, "{tab}");
    let _ = writeln!(md, "How to read it:\n");
    let _ = writeln!(md, "- **bits/byte**: how many bits the model needs per byte of held-out text (context {} tokens); lower is better and it does not depend on the tokenizer.", ev.context);
    let _ = writeln!(md, "- **gap closed**: how much of the quality lost by pruning the distillation won back (100% = as good as the teacher).");
    if let Some(mc) = &t.mc {
        let _ = writeln!(md, "- **multiple choice**: {} questions from `{}`, answered by comparing the log-likelihood of each choice (chance: {:.1}%).", mc.questions, r.eval.mc_tasks.as_ref().map_or(String::new(), |p| p.display().to_string()), 100.0 * mc.chance);
    }
    let _ = writeln!(md, "- **KL / top-1 agreement**: how closely the model's next-token predictions follow the teacher's on {} tokens of the same text.", r.eval.agree_tokens);
    let _ = writeln!(md, "- **speed**: tokens per second on this machine, all models measured in the same run, one measurement at a time for each; prefill = reading a prompt, decode = generating one token per step with a KV cache, at batch 1 and 8.\n");
    if r.search.kd_tokens()?.is_some() {
        md.push_str(&crate::rank::section(out));
    }
    if let Some(a) = align {
        md.push_str(&alignment_section(a));
    }
    md.push_str(&crate::gguf::section(out));
    let _ = writeln!(md, "## Charts\n");
    let _ = writeln!(md, "Quality against size (also `quality.svg`):\n\n![quality](quality.png)\n");
    if has_speed {
        let _ =
            writeln!(md, "Speed, tokens per second (also `speed.svg`):\n\n![speed](speed.png)\n");
    }
    for (f, what) in [
        ("loss.png", "Distillation loss per step, raw and smoothed, with the validation KL"),
        ("val_bpb.png", "Validation bits/byte during distillation (context = training window)"),
    ] {
        if out.join("distill").join(f).is_file() {
            let _ = writeln!(md, "{what}:\n\n![{f}](distill/{f})\n");
        }
    }
    let _ = writeln!(md, "## Stages\n\n| stage | seconds |\n| --- | --- |");
    for (k, s) in seconds {
        let _ = writeln!(md, "| {k} | {s:.0} |");
    }
    let pruned_dir = if r.search.kd_tokens()?.is_some() {
        "`search/models/cand-N/` (the ranking's winner, named in `search/rank.json`; before distillation)"
    } else {
        "`pruned/` (before distillation)"
    };
    let _ = writeln!(md, "\nThe resolved recipe is `recipe.toml`; `orlik run recipe.toml` reproduces this run (finished stages are kept). Models: {pruned_dir} and `final/` are Hugging Face directories.");
    let p = out.join("report.md");
    orlik_io::atomic::write_file_atomically(&p, md.as_bytes())?;
    Ok(tab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_closed_is_the_recovered_share() {
        assert_eq!(gap_closed(2.0, 4.0, 2.5), Some(0.75));
        assert_eq!(gap_closed(2.0, 4.0, 4.0), Some(0.0));
        assert_eq!(gap_closed(2.0, 2.0, 2.0), None);
    }
}
