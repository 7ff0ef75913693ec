//! `orlik score` and `orlik prune`: flags into the libraries' settings, progress bars, printing.
//! The stages themselves are `orlik_score::run` and `orlik_prune::run`.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use orlik_prune::run::SearchReport;
use orlik_prune::{PruneInputs, PruneOutcome, PruneSettings};
use orlik_score::ScoreSettings;
use std::path::{Path, PathBuf};

pub(crate) use orlik_score::run::peak_rss_kb;

fn bar(template: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// `orlik score`: the scoring pass with a progress bar; the report printed.
pub fn score(
    s: &ScoreSettings,
    model: &Path,
    data: &[PathBuf],
    output: &Path,
    force: bool,
) -> Result<()> {
    let pb = bar("{msg:16} [{bar:30}] {pos}/{len} eta {eta}");
    let show = |what: &str, i: usize, n: usize| {
        pb.set_message(what.to_string());
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    };
    let r = orlik_score::run(s, model, data, output, force, &show)?;
    pb.finish_and_clear();
    print!("{}", r.report);
    eprintln!("scores written to {}", output.display());
    Ok(())
}

/// A lowercase name (`bi`, `minitron`...) as the settings' enum of that name.
pub fn parse_name<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.into()))
        .map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
}

/// `orlik prune`: prune with a progress bar; the budget search's ranking and the shapes printed.
pub fn prune(s: &PruneSettings, inputs: &PruneInputs, output: &Path, force: bool) -> Result<()> {
    let pb = bar("{msg:12} [{bar:30}] {pos}/{len}");
    let show = |i: usize, n: usize| {
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    };
    let o = orlik_prune::run(s, inputs, output, force, &show)?;
    pb.finish_and_clear();
    if let Some(r) = &o.search {
        print_search(r, s);
    }
    print_shapes(&o, inputs.model, output);
    Ok(())
}

fn print_search(r: &SearchReport, s: &PruneSettings) {
    eprintln!(
        "{} shapes within {:.1}% of {} parameters; ranked {} by KL to the original",
        r.shapes,
        100.0 * s.tolerance,
        r.budget,
        r.candidates.len()
    );
    println!(
        "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10}",
        "rank", "layers", "hidden", "heads", "kv", "ffn", "params", "KL"
    );
    for c in &r.candidates {
        let t = c.target;
        let g = |x: Option<usize>| x.unwrap_or(0);
        println!(
            "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10.4}",
            c.rank,
            g(t.layers),
            g(t.hidden),
            g(t.heads),
            g(t.kv_heads),
            g(t.ffn),
            c.params,
            c.kl
        );
    }
}

fn print_shapes(o: &PruneOutcome, model: &Path, output: &Path) {
    let (cfg, pcfg) = (&o.before, &o.after);
    let (before, after) = (cfg.param_count(), pcfg.param_count());
    println!(
        "pruned {} -> {}: layers {}->{}, hidden {}->{}, heads {}->{} (kv {}->{}), ffn {}->{}; parameters {} -> {} ({:.1}%)",
        model.display(),
        output.display(),
        cfg.num_hidden_layers,
        pcfg.num_hidden_layers,
        cfg.hidden_size,
        pcfg.hidden_size,
        cfg.num_attention_heads,
        pcfg.num_attention_heads,
        cfg.num_kv_heads(),
        pcfg.num_kv_heads(),
        cfg.intermediate_size,
        pcfg.intermediate_size,
        before,
        after,
        100.0 * after as f64 / before as f64
    );
}
