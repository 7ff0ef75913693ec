//! `orlik mem COMMAND ARGS...`: the memory planner's table for a training command, without
//! running it (`orlik_train::mem`).

use crate::{Cli, Cmd};
use anyhow::{bail, Result};
use clap::Parser;
use orlik_align::stage::{memory_plan, StageKind};
use orlik_io::hfdir::HfModel;
use orlik_train::mem::{estimate, BodyPath, Plan, Side};

/// Print the estimate of `command` (the words after `orlik mem`), and for a GPU of
/// `gpu_memory` bytes whether the part a GPU executor keeps on the device fits there.
pub fn run(command: &[String], gpu_memory: Option<u64>, json: bool) -> Result<()> {
    let cli =
        Cli::try_parse_from(std::iter::once("orlik".to_string()).chain(command.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("orlik mem {}: {}", command.join(" "), e.kind()))?;
    use std::path::PathBuf;
    let cache = match &cli.cmd {
        Cmd::Distill { teacher_cache: Some(c), .. } => orlik_distill::cache::shard_bytes(c),
        _ => 0,
    };
    let (student, teacher, cfg, stage): (&PathBuf, Option<&PathBuf>, _, _) = match &cli.cmd {
        Cmd::Distill { student, teacher, teacher_cache, train, kd } => {
            let online = teacher.as_ref().filter(|_| teacher_cache.is_none());
            (student, online, Some(crate::train_cmd::resolve(train, Some(kd))?), None)
        }
        Cmd::Train { model, train, .. } => {
            (model, None, Some(crate::train_cmd::resolve(train, None)?), None)
        }
        Cmd::Sft(a) => (&a.common.model, None, None, Some(StageKind::Sft(&a.settings))),
        Cmd::Dpo(a) => (&a.common.model, None, None, Some(StageKind::Dpo(&a.settings))),
        Cmd::Grpo(a) => (&a.common.model, None, None, Some(StageKind::Grpo(&a.settings))),
        _ => bail!("orlik mem takes a training command: distill, train, sft, dpo or grpo, with its arguments"),
    };
    let student = HfModel::open(student)?;
    let teacher = teacher.map(|t| HfModel::open(t)).transpose()?;
    let plan = |checkpoint: bool| -> Plan {
        match (&stage, &cfg) {
            (Some(k), _) => memory_plan(k, &student),
            (None, c) => {
                let mut c = c.clone().unwrap_or_default();
                c.checkpoint_layers |= checkpoint;
                let online = teacher.as_ref().map(|t| Side::frozen(t, c.teacher_compute_dtype));
                let p = Plan::lm(&c, Side::of(&student), online);
                Plan { cache_bytes: cache, ..p }
            }
        }
    };
    let p = plan(false);
    let e = estimate(&p);
    if json {
        println!("{}", e.json(command));
        return Ok(());
    }
    let checkpointed =
        (p.checkpointable && p.path != BodyPath::Checkpointed).then(|| estimate(&plan(true)));
    let gate = crate::term::memory_gate();
    println!("orlik {}: estimated memory, nothing run", command.join(" "));
    println!("{}", e.report(&p, gate, checkpointed.as_ref(), gpu_memory));
    Ok(())
}
