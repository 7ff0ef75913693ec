//! The memory planner: what a training run will hold at its peak, component by component, from
//! the model's shapes and the run's settings, before any weight is read. `orlik mem COMMAND`
//! prints it; every training command prints its total and refuses a run that will not fit in
//! the memory this process may use (MemAvailable, or the cgroup's limit when lower).
//!
//! The model of the peak, measured on this code (README: "Memory"):
//!
//! - held for the whole run: the program (binary, tokenizer, allocator), the pages of every
//!   checkpoint read (memory-mapped, resident once read), the model's f32 weights (candle's
//!   tensors) and the f32 master copy the optimizer updates, AdamW's two moments, the gradients
//!   (twice with accumulation: the micro-batch's and the sum), an online teacher's f32 weights;
//! - then the larger of two moments of a step: the forward/backward (activations kept for the
//!   backward, one layer's backward workspace, the lm_head chunk, the teacher's rows), or the
//!   update (new weights built before the old are freed: one more f32 copy).
//!
//! The allocator keeps freed memory for reuse (orlik sets mimalloc's purge delay to never, for
//! speed), so the peak is the high-water mark of live memory plus its fragmentation, which the
//! step's share carries as a factor fitted to the measurements.

use crate::TrainConfig;
use orlik_io::hfdir::HfModel;
use orlik_model::{Config, GradModel};

/// One part of the peak.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: &'static str,
    pub bytes: u64,
    /// Held for the whole run (true) or only during a step's forward/backward or update.
    pub held: bool,
}

/// A model the run reads: its shapes and the bytes of its checkpoint files.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub config: &'a Config,
    pub file_bytes: u64,
    /// Bytes per parameter of its weights in memory: 4 (f32), 2 for a frozen model whose
    /// matrices are held 16-bit (`ComputeDtype`).
    pub weight_bytes: u64,
}

/// How the trainable body runs, as the trainer chooses it (`body.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPath {
    /// The CPU executor's hand-written forward/backward (every architecture): keeps a fixed set
    /// of buffers per layer (`cpu/train.rs`, `LayerSaved`).
    Fast,
    /// The same with --checkpoint-layers: each layer's input, plus one layer's buffers at a
    /// time in the backward.
    Checkpointed,
    /// candle autograd (forced by tests, or a block the CPU executor cannot run): every
    /// intermediate of every layer until the backward.
    Autograd,
}

/// What the run does, in the terms the memory depends on.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub student: Side<'a>,
    /// An online teacher (distillation without a cache), or GRPO's / DPO's reference model.
    pub teacher: Option<Side<'a>>,
    /// Sequences per micro-batch and their length in tokens.
    pub rows: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    /// Positions per lm_head chunk (`loss_chunk`).
    pub loss_chunk: usize,
    pub path: BodyPath,
    /// GRPO's sampling: completions decoded at once and their longest length (KV cache).
    pub rollout: Option<(usize, usize)>,
    /// Bytes of a teacher cache's shards: memory-mapped, resident once read.
    pub cache_bytes: u64,
    /// The command has --checkpoint-layers (distill, train; not the alignment stages).
    pub checkpointable: bool,
}

impl<'a> Side<'a> {
    pub fn of(hf: &'a HfModel) -> Side<'a> {
        Side { config: &hf.config, file_bytes: hf.checkpoint.bytes_on_disk(), weight_bytes: F32 }
    }

    /// A frozen model whose matrices are held as `compute` asks (resolved against its stored
    /// dtypes): 2 bytes per parameter when 16-bit (norms and biases, a rounding error, counted
    /// so too).
    pub fn frozen(hf: &'a HfModel, compute: orlik_model::ComputeDtype) -> Side<'a> {
        let half = compute.resolve(&hf.stored_dtypes()).half().is_some();
        Side { weight_bytes: if half { 2 } else { F32 }, ..Side::of(hf) }
    }
}

impl BodyPath {
    /// The path the trainer takes for `c` (`trainer.rs`): checkpointed autograd when asked,
    /// else the hand-written one where it exists.
    pub fn of(c: &Config, checkpoint_layers: bool) -> BodyPath {
        match (checkpoint_layers, GradModel::unsupported(c)) {
            (_, Some(_)) => BodyPath::Autograd,
            (true, None) => BodyPath::Checkpointed,
            (false, None) => BodyPath::Fast,
        }
    }
}

impl<'a> Plan<'a> {
    /// A KD or CE run of `cfg` (`teacher`: an online teacher; none with a cache or for CE).
    pub fn lm(cfg: &TrainConfig, student: Side<'a>, teacher: Option<Side<'a>>) -> Plan<'a> {
        Plan {
            path: BodyPath::of(student.config, cfg.checkpoint_layers),
            student,
            teacher,
            rows: cfg.batch,
            seq_len: cfg.seq_len,
            grad_accum: cfg.grad_accum,
            loss_chunk: cfg.loss_chunk,
            rollout: None,
            cache_bytes: 0,
            checkpointable: true,
        }
    }
}

/// The components and their peak.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub components: Vec<Component>,
    pub peak: u64,
}

/// The program itself: binary, tokenizer, allocator arenas, threads' stacks (measured: orlik
/// with SmolLM2's 49k-token tokenizer, less what the components below account for).
const PROGRAM: u64 = 100 << 20;
/// A second model's fixed share: its tokenizer (loaded to compare the vocabularies) and its
/// tables (measured: distillation's peak less the components, SmolLM2 as teacher).
const TEACHER_FIXED: u64 = 150 << 20;
/// Fragmentation of the step's short-lived buffers in the allocator's retained memory (fitted:
/// README, "Memory").
const STEP_OVERHEAD: f64 = 1.15;
const F32: u64 = 4;

/// f32 values the hand-written body keeps per token per layer for the backward (`LayerSaved`:
/// x, inv1, q, k, v, lse, attn, x2, inv2, gate, up; with q/k norms their inputs and 1/rms per
/// head; with sandwich norms o_proj's and down_proj's outputs and their 1/rms), and one layer's
/// backward workspace per token (dx, da, dh2, dattn, dq, dk, dv, dh1 and the recomputed norms).
fn fast_per_token(c: &Config) -> (u64, u64) {
    let (h, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let (heads, kv) = (c.num_attention_heads as u64, c.num_kv_heads() as u64);
    let qd = heads * c.head_dim() as u64;
    let kd = kv * c.head_dim() as u64;
    let mut saved = 2 * h + 2 + 2 * qd + 2 * kd + 2 * f + heads;
    if c.qk_norm() {
        saved += qd + kd + heads + kv;
    }
    if c.sandwich_norms() {
        saved += 2 * h + 2;
    }
    let work = 2 * f + 4 * h + 2 * qd + 2 * kd;
    (saved, work)
}

/// One layer's autograd graph per token: every matmul output, norm, rotary and activation
/// intermediate and their gradients (about 11 times what the hand-written path keeps), and the
/// (heads × t) attention scores, probabilities, mask and their gradients. Fitted to autograd
/// runs with checkpointing of SmolLM2 at t = 128, 256 and 1024 (before the CPU executor had its
/// own checkpointing); only forced-autograd runs (tests) take this path now.
fn autograd_layer_per_token(c: &Config, t: u64) -> u64 {
    let (saved, _) = fast_per_token(c);
    11 * saved + 4 * c.num_attention_heads as u64 * t
}

/// The estimate of `p`'s peak memory.
pub fn estimate(p: &Plan) -> Estimate {
    let c = p.student.config;
    let params = c.param_count() as u64;
    let n = (p.rows * p.seq_len) as u64;
    let (t, layers, h) = (p.seq_len as u64, c.num_hidden_layers as u64, c.hidden_size as u64);
    let vocab = c.vocab_size as u64;
    let mut v = vec![
        Component { name: "program (binary, tokenizer, allocator)", bytes: PROGRAM, held: true },
        Component {
            name: "checkpoint pages (memory-mapped)",
            bytes: p.student.file_bytes,
            held: true,
        },
        Component { name: "weights (f32 tensors)", bytes: F32 * params, held: true },
        Component { name: "master copy (f32)", bytes: F32 * params, held: true },
        Component { name: "AdamW moments (2 x f32)", bytes: 2 * F32 * params, held: true },
        Component {
            name: "gradients (f32)",
            bytes: F32 * params * if p.grad_accum > 1 { 2 } else { 1 },
            held: true,
        },
    ];
    if let Some(te) = &p.teacher {
        let tp = te.config.param_count() as u64;
        v.push(Component {
            name: "teacher / reference checkpoint pages",
            bytes: te.file_bytes,
            held: true,
        });
        v.push(Component {
            name: if te.weight_bytes == F32 {
                "teacher / reference weights (f32)"
            } else {
                "teacher / reference weights (16-bit matrices)"
            },
            bytes: te.weight_bytes * tp,
            held: true,
        });
        v.push(Component {
            name: "teacher / reference tokenizer and tables",
            bytes: TEACHER_FIXED,
            held: true,
        });
    }
    if p.cache_bytes > 0 {
        v.push(Component {
            name: "teacher cache pages (memory-mapped)",
            bytes: p.cache_bytes,
            held: true,
        });
    }
    let (saved, work) = fast_per_token(c);
    let activations = match p.path {
        BodyPath::Fast => F32 * n * (saved * layers + 2 * h + work),
        BodyPath::Autograd => F32 * n * autograd_layer_per_token(c, t) * (layers + 1),
        BodyPath::Checkpointed => F32 * n * (h * layers + saved + 2 * h + work),
    };
    let mut step = activations;
    v.push(Component { name: "activations + backward workspace", bytes: activations, held: false });
    // logits, their gradient and the loss rows of one chunk
    let head = 3 * F32 * p.loss_chunk.min(n as usize) as u64 * vocab;
    v.push(Component { name: "lm_head chunk", bytes: head, held: false });
    step += head;
    // lm_head's gradient, accumulated over the chunks (`body::HeadGrad`) until the body's
    // backward has run: the largest single buffer of a big-vocabulary model's step
    let head_grad = F32 * vocab * h;
    v.push(Component { name: "lm_head gradient", bytes: head_grad, held: false });
    step += head_grad;
    if let Some(te) = &p.teacher {
        let tc = te.config;
        // the teacher's final hidden states of the micro-batch, one layer's inference
        // intermediates, and its logits for a chunk
        let (tsaved, _) = fast_per_token(tc);
        let th = tc.hidden_size as u64;
        let tb = F32 * (n * th + n * tsaved + p.loss_chunk as u64 * tc.vocab_size as u64);
        v.push(Component {
            name: "teacher / reference forward (hidden, one layer, logits)",
            bytes: tb,
            held: false,
        });
        step += tb;
    }
    if let Some((seqs, len)) = p.rollout {
        let kv = 2 * F32 * (seqs * len) as u64 * layers * (c.num_kv_heads() * c.head_dim()) as u64;
        v.push(Component { name: "KV cache (sampling)", bytes: kv, held: false });
        step = step.max(kv + F32 * seqs as u64 * vocab);
    }
    let update = F32 * params;
    v.push(Component {
        name: "update (new weights before the old are freed)",
        bytes: update,
        held: false,
    });
    let held: u64 = v.iter().filter(|c| c.held).map(|c| c.bytes).sum();
    let peak = held + ((step as f64 * STEP_OVERHEAD) as u64).max(update);
    Estimate { components: v, peak }
}

/// Memory this process may use: MemAvailable, or what the cgroup still allows when that is
/// less; the second value names the source.
pub fn available() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    };
    let avail = kb("MemAvailable:")?;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = match (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    Some(match cgroup {
        Some(c) if c < avail => (c, "the cgroup's memory.max less its memory.current"),
        _ => (avail, "MemAvailable"),
    })
}

/// Bytes as people read them (GiB with one decimal above 1 GiB, else MiB).
pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

impl Estimate {
    /// The table `orlik mem` prints: one row per component, then the peak.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for c in &self.components {
            let when = if c.held { "whole run" } else { "per step" };
            s += &format!("  {:<52} {:>10}  {when}\n", c.name, human(c.bytes));
        }
        s + &format!("  {:<52} {:>10}", "peak (held + the larger step moment)", human(self.peak))
    }

    /// The table, the verdict against `gate` ("will not fit" is an answer here, not an error),
    /// what --checkpoint-layers would change, and the device part against a GPU's memory.
    pub fn report(
        &self,
        p: &Plan,
        gate: Gate,
        checkpointed: Option<&Estimate>,
        gpu: Option<u64>,
    ) -> String {
        let mut s = self.table() + "\n";
        s += &match check(self, p, gate) {
            Ok(line) => line,
            Err(e) => e.to_string(),
        };
        if let Some(c) = checkpointed {
            s += &format!(
                "\nwith --checkpoint-layers (each layer's input kept, one more forward): peak {}",
                human(c.peak)
            );
        }
        if let Some(g) = gpu {
            let d = self.device_bytes();
            let verdict = if d <= g { "fits" } else { "does not fit" };
            s += &format!("\non a GPU of {}: the device part {} {verdict} (program and mapped checkpoint pages stay on the host; orlik has no GPU executor yet)", human(g), human(d));
        }
        s
    }

    /// Components (name, bytes, whether held for the whole run), peak, available and device
    /// bytes, and the command they are of.
    pub fn json(&self, command: &[String]) -> serde_json::Value {
        let parts: Vec<_> = self
            .components
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "bytes": c.bytes, "whole_run": c.held}))
            .collect();
        serde_json::json!({"command": command, "components": parts, "peak_bytes": self.peak,
            "available_bytes": available().map(|a| a.0), "device_bytes": self.device_bytes()})
    }

    /// The bytes a GPU executor would keep on the device: the peak less the program and the
    /// memory-mapped checkpoint pages, which stay on the host.
    pub fn device_bytes(&self) -> u64 {
        let host = |c: &&Component| c.name.starts_with("program") || c.name.contains("pages");
        self.peak - self.components.iter().filter(host).map(|c| c.bytes).sum::<u64>()
    }
}

/// What a training command compares its estimate with before it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gate {
    /// The memory available to this process (refuse above it).
    #[default]
    Available,
    /// A limit the user set (`--memory-limit`): refuse above it.
    Limit(u64),
    /// Print the estimate, never refuse (`--no-memory-check`).
    Off,
}

/// The line every training command prints before it starts, or (the estimate above the
/// gate's bound) the error that names the fixes that apply to `plan`.
pub fn check(e: &Estimate, plan: &Plan, gate: Gate) -> Result<String, crate::TrainError> {
    let bound = match gate {
        Gate::Limit(b) => Some((b, "--memory-limit")),
        _ => available(),
    };
    let Some((avail, source)) = bound else {
        return Ok(format!("memory: estimated peak {} (available memory unknown)", human(e.peak)));
    };
    let line = format!("estimated peak {} of {} ({source})", human(e.peak), human(avail));
    if e.peak <= avail || gate == Gate::Off {
        return Ok(format!("memory: {line}"));
    }
    Err(crate::TrainError::Memory(format!(
        "{line}: this run will not fit; try {}; `orlik mem` with the same arguments shows every component; --no-memory-check runs it anyway",
        fixes(e, plan).join(", or ")
    )))
}

/// [`check`] for a run on `device` (a training setting's `device`): on a GPU, the part a GPU
/// executor keeps there ([`Estimate::device_bytes`]) against the GPU's memory; on the CPU,
/// [`check`] itself.
pub fn check_on(
    e: &Estimate,
    plan: &Plan,
    gate: Gate,
    device: &str,
) -> Result<String, crate::TrainError> {
    let probe = crate::TrainConfig { device: device.to_string(), ..Default::default() };
    match crate::exec::Backend::of(&probe)? {
        crate::exec::Backend::Cpu => check(e, plan, gate),
        crate::exec::Backend::Cuda(info) => check_gpu(e, plan, gate, &info),
    }
}

/// The GPU side of [`check_on`] for the GPU `info`.
pub fn check_gpu(
    e: &Estimate,
    plan: &Plan,
    gate: Gate,
    info: &orlik_cuda::GpuInfo,
) -> Result<String, crate::TrainError> {
    let on = e.device_bytes();
    let total = info.total_bytes as u64;
    let line = format!("estimated {} on {info} of its {}", human(on), human(total));
    if on <= total || gate == Gate::Off {
        return Ok(format!("memory: {line}"));
    }
    Err(crate::TrainError::Memory(format!(
        "{line}: this run will not fit on the GPU; try {}; `orlik mem --gpu-memory {}` with the same arguments shows every component; --no-memory-check runs it anyway",
        fixes(e, plan).join(", or "),
        human(total).replace(' ', "")
    )))
}

/// The changes that lower `plan`'s peak, as the refusals name them.
fn fixes(e: &Estimate, plan: &Plan) -> Vec<String> {
    let mut fixes = vec![format!(
        "a smaller micro-batch (--batch {}) with more accumulation (--grad-accum {}) or a shorter sequence length",
        (plan.rows / 2).max(1),
        plan.grad_accum * 2
    )];
    if plan.checkpointable && plan.path != BodyPath::Checkpointed {
        let ckpt = Plan { path: BodyPath::Checkpointed, ..plan.clone() };
        if estimate(&ckpt).peak < e.peak {
            fixes.push("--checkpoint-layers".into());
        }
    }
    if plan.teacher.is_some() && plan.rollout.is_none() {
        fixes.push("a teacher cache (orlik teacher-cache, then --teacher-cache) instead of the online teacher".into());
    }
    fixes
}

#[cfg(test)]
mod tests {
    use super::*;
    use orlik_model::testing::tiny;
    use serde_json::json;

    fn plan<'a>(c: &'a Config, rows: usize, t: usize, accum: usize) -> Plan<'a> {
        Plan {
            student: Side { config: c, file_bytes: 1000, weight_bytes: F32 },
            teacher: None,
            rows,
            seq_len: t,
            grad_accum: accum,
            loss_chunk: 4,
            path: BodyPath::of(c, false),
            rollout: None,
            cache_bytes: 0,
            checkpointable: true,
        }
    }

    fn bytes(e: &Estimate, name: &str) -> u64 {
        e.components.iter().filter(|c| c.name.starts_with(name)).map(|c| c.bytes).sum()
    }

    #[test]
    fn the_held_components_are_the_copies_of_the_parameters() {
        let c = tiny("LlamaForCausalLM", json!({}));
        let p = c.param_count() as u64;
        let e = estimate(&plan(&c, 2, 8, 1));
        assert_eq!(bytes(&e, "checkpoint pages"), 1000);
        assert_eq!(bytes(&e, "weights"), 4 * p);
        assert_eq!(bytes(&e, "master copy"), 4 * p);
        assert_eq!(bytes(&e, "AdamW"), 8 * p);
        assert_eq!(bytes(&e, "gradients"), 4 * p);
        assert_eq!(bytes(&e, "update"), 4 * p);
        let held: u64 = e.components.iter().filter(|c| c.held).map(|c| c.bytes).sum();
        let step = bytes(&e, "activations") + bytes(&e, "lm_head");
        assert_eq!(e.peak, held + ((step as f64 * STEP_OVERHEAD) as u64).max(4 * p));
    }

    #[test]
    fn activations_grow_with_the_tokens_and_accumulation_doubles_the_gradients() {
        let c = tiny("LlamaForCausalLM", json!({}));
        let (a, b) = (estimate(&plan(&c, 2, 8, 1)), estimate(&plan(&c, 4, 8, 1)));
        assert_eq!(2 * bytes(&a, "activations"), bytes(&b, "activations"));
        assert!(b.peak > a.peak);
        let acc = estimate(&plan(&c, 2, 8, 2));
        assert_eq!(bytes(&acc, "gradients"), 2 * bytes(&a, "gradients"));
    }

    #[test]
    fn a_teacher_adds_its_weights_and_a_rollout_its_kv_cache() {
        let c = tiny("LlamaForCausalLM", json!({}));
        let mut p = plan(&c, 2, 8, 1);
        p.teacher = Some(Side { config: &c, file_bytes: 500, weight_bytes: F32 });
        let e = estimate(&p);
        assert_eq!(bytes(&e, "teacher / reference checkpoint pages"), 500);
        assert_eq!(bytes(&e, "teacher / reference weights"), 4 * c.param_count() as u64);
        assert!(bytes(&e, "teacher / reference forward") > 0);
        // A teacher held in 16 bits: half the weights' bytes, named so.
        let half =
            Plan { teacher: Some(Side { weight_bytes: 2, ..p.teacher.unwrap() }), ..p.clone() };
        let e16 = estimate(&half);
        assert_eq!(bytes(&e16, "teacher / reference weights (16-bit"), 2 * c.param_count() as u64);
        p.rollout = Some((16, 8));
        let kv = 2 * 4 * 16 * 8 * 2 * (c.num_kv_heads() * c.head_dim()) as u64;
        assert_eq!(bytes(&estimate(&p), "KV cache"), kv);
        assert_eq!(bytes(&estimate(&plan(&c, 2, 8, 1)), "teacher"), 0);
        let cached = Plan { cache_bytes: 77, ..plan(&c, 2, 8, 1) };
        assert_eq!(bytes(&estimate(&cached), "teacher cache pages"), 77);
    }

    #[test]
    fn every_architecture_takes_the_hand_written_path_and_checkpointing_keeps_less() {
        let c = tiny("Gemma3ForCausalLM", json!({}));
        assert_eq!(BodyPath::of(&c, false), BodyPath::Fast);
        assert_eq!(BodyPath::of(&c, true), BodyPath::Checkpointed);
        let llama = tiny("LlamaForCausalLM", json!({}));
        assert_eq!(BodyPath::of(&llama, false), BodyPath::Fast);
        assert_eq!(BodyPath::of(&llama, true), BodyPath::Checkpointed);
        // Gemma's q/k norms and sandwich norms keep more per layer than Llama's block.
        assert!(fast_per_token(&c).0 > fast_per_token(&llama).0);
        let mut full = plan(&c, 4, 16, 1);
        full.path = BodyPath::Autograd;
        let mut p = plan(&c, 4, 16, 1);
        p.path = BodyPath::Checkpointed;
        let (full, fast) = (estimate(&full), estimate(&plan(&c, 4, 16, 1)));
        let ckpt = bytes(&estimate(&p), "activations");
        assert!(ckpt < bytes(&fast, "activations") && ckpt < bytes(&full, "activations"));
    }

    #[test]
    fn the_check_refuses_above_its_bound_and_names_the_fixes() {
        let c = tiny("Gemma3ForCausalLM", json!({}));
        let mut p = plan(&c, 4, 16, 1);
        p.teacher = Some(Side { config: &c, file_bytes: 500, weight_bytes: F32 });
        let e = estimate(&p);
        let err = check(&e, &p, Gate::Limit(1024)).unwrap_err().to_string();
        for want in [
            "will not fit",
            "--batch 2",
            "--grad-accum 2",
            "--checkpoint-layers",
            "teacher cache",
            "orlik mem",
            "--no-memory-check",
            "--memory-limit",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(check(&e, &p, Gate::Limit(e.peak)).unwrap().contains("estimated peak"));
        assert!(check(&e, &p, Gate::Off).is_ok());
    }

    /// On a GPU the device's part is compared with the GPU's memory (the program and the
    /// mapped checkpoint stay on the host): the same plan fits an 80 GB GPU and not a 1 MB one,
    /// whose refusal names the GPU and the fixes; --no-memory-check lets it through.
    #[test]
    fn a_gpu_run_is_gated_by_the_gpus_memory() {
        let c = tiny("LlamaForCausalLM", json!({}));
        let p = plan(&c, 2, 8, 1);
        let e = estimate(&p);
        let gpu = |total: usize| orlik_cuda::GpuInfo {
            ordinal: 0,
            name: "Test GPU".into(),
            capability: (9, 0),
            total_bytes: total,
        };
        let ok = check_gpu(&e, &p, Gate::Available, &gpu(80 << 30)).unwrap();
        assert!(ok.starts_with("memory: estimated ") && ok.contains("on cuda:0 Test GPU"), "{ok}");
        assert!(e.device_bytes() < e.peak && e.device_bytes() > bytes(&e, "AdamW"));
        let small = gpu((e.device_bytes() - 1) as usize);
        let err = check_gpu(&e, &p, Gate::Available, &small).unwrap_err().to_string();
        assert!(err.contains("will not fit on the GPU") && err.contains("--grad-accum 2"), "{err}");
        assert!(check_gpu(&e, &p, Gate::Off, &small).is_ok());
        // On the CPU, check_on is check.
        assert_eq!(check_on(&e, &p, Gate::Off, "cpu").unwrap(), check(&e, &p, Gate::Off).unwrap());
    }
}
