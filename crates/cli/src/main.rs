//! `orlik`: the command-line front end. Thin: argument parsing, progress bars, printing; all work
//! happens in the library crates.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod align_cmd;
mod commands;
mod device_cmd;
mod eval_cmd;
mod mem_cmd;
mod prune_cmd;
mod term;
mod train_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "orlik",
    version,
    about = "Make language models smaller without making them dumber.",
    long_about = "orlik compresses Hugging Face decoder-only language models (Llama, Mistral, Qwen2, Gemma 3 text) \
    on CPU: `orlik compress` (or `orlik run RECIPE.toml`) scores, prunes, distils from the original and \
    evaluates teacher, pruned and distilled side by side with a report. The stages are also commands of \
    their own (score, prune, distill, train, teacher-cache, eval, trim-vocab). Models are HF directories \
    (config.json + *.safetensors + tokenizer.json); GGUF files are imported with `orlik convert`. \
    Alignment: `orlik sft`, `orlik dpo`, `orlik grpo`. \
    orlik never writes over what it reads and never replaces a directory it did not write: every \
    output carries a .orlik-output.json marker, and --force replaces only that command's own output."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
    /// Run a training command even when its estimated peak memory (printed before it starts;
    /// `orlik mem` shows every component) is above the memory available to this process.
    #[arg(long, global = true)]
    no_memory_check: bool,
    /// Refuse a training command whose estimated peak memory is above this (e.g. 16GB), instead
    /// of above the memory available now: room for the other jobs of a shared machine.
    #[arg(long, global = true, value_parser = orlik_io::text::parse_size, conflicts_with = "no_memory_check")]
    memory_limit: Option<u64>,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Show architecture, dimensions, parameter counts by component, dtypes and size on disk.
    Inspect {
        /// HF model directory (config.json + safetensors).
        path: PathBuf,
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Convert a GGUF file (llama.cpp) into an HF directory: dequantised weights, HF Q/K layout,
    /// config.json from the GGUF metadata, tokenizer.json from its embedded tokenizer.
    Convert {
        /// Input .gguf file.
        gguf: PathBuf,
        /// Output HF directory (written atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Stored dtype of the weights: f32 keeps dequantised values exactly.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
        /// Largest safetensors shard, e.g. 500MB, 2GB (one file `model.safetensors` if it fits).
        #[arg(long, default_value = "2GB")]
        max_shard_size: String,
        /// Replace the output directory if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Export an HF directory as a GGUF file that llama.cpp (and Ollama, LM Studio) loads:
    /// llama.cpp's tensor names and metadata, Q/K rows as llama.cpp expects, the tokenizer and
    /// chat template inside, the model's licence files written beside it (OUT-STEM.NAME).
    /// Norms and biases stay f32; a matrix whose rows are not whole blocks of --type falls back
    /// (q4_k -> q5_0 -> q8_0 -> f16, q6_k -> q8_0 -> f16) and the summary says which.
    Export {
        /// HF model directory (config.json + safetensors + tokenizer.json).
        model: PathBuf,
        /// Output .gguf file (written atomically).
        #[arg(long)]
        gguf: PathBuf,
        /// Storage type of the weight matrices.
        #[arg(long = "type", default_value = "f16", value_parser = orlik_io::export::GgufType::NAMES.to_vec())]
        ty: String,
        /// Replace the output file if it is a GGUF.
        #[arg(long)]
        force: bool,
    },
    /// Generate text from a prompt, streaming tokens as they come (KV cache).
    Generate {
        /// HF model directory.
        path: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 0.9)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap the prompt as one ChatML user turn (`<|im_start|>user ... <|im_start|>assistant`).
        #[arg(long)]
        chat: bool,
        /// Print one JSON object at the end instead of streaming: the text and, for every new
        /// token, its id, the two best logits of its row with their token ids (how near a tie the
        /// choice was), and the length of the decoded text once it is added (`chars`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        frozen: Frozen,
    },
    /// Compress a model end to end: score → prune to a parameter budget → distill from the
    /// original → evaluate teacher, pruned and distilled side by side (bits/byte, multiple choice,
    /// agreement with the teacher, prefill/decode speed) → OUT/report.md with charts. Writes
    /// OUT/scores/, OUT/pruned/ (HF), OUT/final/ (HF, distilled), OUT/eval.json, OUT/recipe.toml
    /// (every setting; `orlik run OUT/recipe.toml` repeats the run). Re-running the same command
    /// keeps finished stages and resumes an interrupted distillation.
    Compress {
        /// The model to compress (HF directory; import a GGUF with `orlik convert` first).
        teacher: PathBuf,
        /// Parameter budget: a fraction of the model (0.67) or a count (90000000).
        #[arg(long)]
        params: f64,
        /// Training text [default: the project's Polish corpus, train.txt, from scripts/fetch-assets.sh].
        #[arg(long, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Validation text [default: the corpus' valid-small.txt].
        #[arg(long, num_args = 1..)]
        val: Vec<PathBuf>,
        /// Distillation tokens [default: 100000].
        #[arg(long)]
        tokens: Option<u64>,
        /// Multiple-choice questions (EXAMS JSONL) for the evaluation, e.g. ../shared/data/pl/exams-pl-train.jsonl.
        #[arg(long)]
        mc_tasks: Option<PathBuf>,
        /// Also write OUT/final.gguf (llama.cpp) with weight matrices in this type (recipe key
        /// export.gguf); the report gives its size and, where llama.cpp's llama-bench is found
        /// (ORLIK_LLAMA_CPP=DIR or PATH), its decode speed.
        #[arg(long, value_name = "TYPE", value_parser = orlik_io::export::GgufType::NAMES.to_vec())]
        export_gguf: Option<String>,
        /// Any recipe key, e.g. --set distill.lr=1e-3 --set prune.axes=depth,mlp (see `orlik run --help`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output directory (see above for what it holds).
        #[arg(short, long)]
        output: PathBuf,
        /// OUT holds a run of other settings: keep its stages whose inputs and settings are unchanged, redo the rest.
        #[arg(long)]
        resume: bool,
        /// Delete OUT and start over.
        #[arg(long, conflicts_with = "resume")]
        force: bool,
    },
    /// Run the compression pipeline from a recipe (TOML): top-level `teacher`, `output`, `data`,
    /// `val`, and tables [score], [prune], [distill], [eval] holding every option of each stage,
    /// optional [trim] (the vocabulary cut to the training text's tokens first), [search]
    /// (`rank_by = "kd:TOKENS"`: prune's best candidates ranked after short distillation),
    /// [sft], [dpo], [grpo] (alignment) and [export] (`gguf = "q8_0"`: OUT/final.gguf)
    /// (recipes/ has examples; OUT/recipe.toml of any run lists them all with their values).
    /// Unknown keys and wrong types are errors. Stages whose inputs and settings are unchanged
    /// are kept; an interrupted stage resumes.
    Run {
        /// Recipe file.
        recipe: PathBuf,
        /// Override a key: --set prune.params=0.5 --set distill.tokens=200000 --set output=runs/x.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output directory (overrides the recipe's `output`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// OUT holds a run of another recipe: keep its unchanged stages, redo the rest.
        #[arg(long)]
        resume: bool,
        /// Delete OUT and start over.
        #[arg(long, conflicts_with = "resume")]
        force: bool,
    },
    /// Trim the vocabulary to the tokens a language uses: keep every token the corpus uses
    /// (at least --min-count times), all special and byte-fallback (or byte-level) tokens, the
    /// --keep list, and every token BPE passes through while building a kept one; drop the rest
    /// from tokenizer.json (vocab and merges, ids renumbered), the embedding and lm_head. The
    /// corpus then tokenizes to exactly the same token strings (checked before writing); other
    /// text still tokenizes through byte fallback. BPE tokenizers only (byte-level or
    /// SentencePiece-style); writes OUT/trim.json with the counts.
    TrimVocab {
        /// HF model directory.
        model: PathBuf,
        /// Corpus text files.
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        /// Keep tokens used at least this many times.
        #[arg(long, default_value_t = 1)]
        min_count: u64,
        /// File of extra tokens to keep, one token string per line (as in tokenizer.json's vocab).
        #[arg(long)]
        keep: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Evaluate a model.
    Eval {
        #[command(subcommand)]
        what: EvalCmd,
    },
    /// Importance scores for pruning (Minitron): one calibration pass collecting MLP-neuron,
    /// attention-head and hidden-channel importance, and depth metrics side by side (Block
    /// Influence, angular distance of contiguous blocks, leave-one-layer-out KL and loss).
    /// Writes scores.safetensors + scores.json (format version, model and data sha256, settings)
    /// and report.md with PNG charts. Streams layer by layer: one layer's weights in memory at a
    /// time plus the calibration activations (`--in-memory` loads the whole model: faster).
    Score(prune_cmd::ScoreArgs),
    /// Structured pruning to exact dimensions: depth, hidden width, attention heads / KV groups,
    /// MLP size. Writes an HF directory (loadable by transformers) with prune_plan.json, which
    /// `--plan` re-applies to a sibling checkpoint. With `--params`, searches the shapes within
    /// `--tolerance` of a parameter budget, ranks a shortlist by KL to the original model on
    /// held-out text (`--data`), prints the table and prunes the best.
    Prune(prune_cmd::PruneArgs),
    /// Sensitivity sweep before any distillation: prune along one axis at a time (depth,
    /// hidden, heads, MLP) to each --fractions of the parameters, and the budget search's pick
    /// at each, then measure every pruned model against the original: KL and top-1 agreement,
    /// bits/byte on each --val text (use one the model never saw in calibration, e.g.
    /// ud-pl-pud). Writes sweep.json (rewritten after every point: `--resume` continues a
    /// killed sweep), sweep.md and charts of quality against parameters with the Pareto front.
    Sweep(prune_cmd::SweepArgs),
    /// Logit-only knowledge distillation (Minitron): train a (pruned) student to match the
    /// teacher's next-token distributions (forward KL by default, temperature 1, no CE term) on
    /// packed text. The teacher runs online, or its top-k logits come from `--teacher-cache`.
    /// Checkpoints every --save-every steps (Ctrl-C saves one and exits; `--resume` continues
    /// bit-identically). Writes OUT/final/ (HF), OUT/metrics.jsonl, OUT/loss.png.
    Distill {
        /// Teacher HF directory (the unpruned model). Optional with --teacher-cache; when both
        /// are given the cache must come from this teacher.
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Student HF directory (e.g. the output of `orlik prune`).
        #[arg(long)]
        student: PathBuf,
        /// Teacher logit cache from `orlik teacher-cache` (same data, seq-len, temperature).
        #[arg(long)]
        teacher_cache: Option<PathBuf>,
        #[command(flatten)]
        train: train_cmd::TrainArgs,
        #[command(flatten)]
        kd: train_cmd::KdArgs,
    },
    /// Supervised fine-tuning on chat conversations (JSONL {"messages": [...]}, rendered with the
    /// model's chat template): cross-entropy on the assistant's tokens only, one conversation per
    /// row (no packing). Same trainer as distill: checkpoints, Ctrl-C + --resume, metrics.jsonl,
    /// loss.png; writes OUT/final/ (HF).
    Sft(align_cmd::SftArgs),
    /// Direct preference optimisation on pairs (JSONL {"prompt", "chosen", "rejected"}): DPO
    /// (sigmoid), IPO, or DPO-Positive (Smaug: penalises the chosen answer losing likelihood).
    /// Reference log-probs are computed once from the starting model and cached in
    /// OUT/ref_logps.json. Metrics: loss, rewards_chosen/rejected/margin/accuracy.
    Dpo(align_cmd::DpoArgs),
    /// GRPO with verifiable rewards: per prompt, sample --group completions (batched, KV cache),
    /// score them (built-in verifiers or an external command), and push up the better ones by
    /// their group-normalised advantage (clipped ratio objective, optional k3 KL, Dr. GRPO).
    /// Metrics: reward_mean, reward_std, kl, completion_length, clip_fraction; OUT/samples.jsonl.
    Grpo(align_cmd::GrpoArgs),
    /// Plain next-token cross-entropy training on the same trainer as `distill`: fine-tune a
    /// model (e.g. a pruned student, as a baseline to distillation) or train its architecture
    /// from a random initialisation (`--init random`).
    Train {
        /// HF model directory.
        model: PathBuf,
        /// Start from the model's weights (`pretrained`) or a seeded random init (`random`,
        /// uniform with std 0.02 for matrices, norms near 1).
        #[arg(long, default_value = "pretrained", value_parser = ["pretrained", "random"])]
        init: String,
        #[command(flatten)]
        train: train_cmd::TrainArgs,
    },
    /// Run the teacher once over the training (and validation) text and store its top-k
    /// log-probabilities and tail mass per position in mmap-able shards with a manifest, so
    /// distillation runs reuse them without running the teacher. Resumable: complete shards
    /// are kept when the command is re-run with the same settings.
    TeacherCache(train_cmd::CacheArgs),
    /// Tokenize text / JSONL sources once into a dataset directory: packed windows of
    /// (--seq-len)+1 tokens in mmap'd shards, document boundaries, a manifest (tokenizer and source
    /// sha256s, mixing weights). `distill`, `train` and `teacher-cache` take it as --data (and
    /// --val), map it instead of tokenizing at start, and each rank reads only its windows.
    /// Parallel; a killed run continues from its last shard when re-run. Example: orlik
    /// tokenize --model M --data a.txt b.jsonl --weights 1,0.5 --val v.txt -o ds
    Tokenize(train_cmd::TokenizeArgs),
    /// Print, without running it, the peak memory a training command will need, component by
    /// component (weights, master copy, AdamW moments, gradients, activations at its batch and
    /// sequence length, the online teacher, the KV cache of GRPO's sampling, the lm_head chunk,
    /// the program), and whether it fits in the memory available here. Every training command
    /// prints the same estimate before it starts and refuses a run that will not fit
    /// (--no-memory-check runs it anyway). Example: orlik mem distill --teacher T --student S
    /// --data train.txt --steps 100 -o out
    Mem {
        /// Also say whether the part a GPU executor keeps on the device fits in a GPU of this
        /// memory (e.g. 80GB, 141GB).
        #[arg(long, value_parser = orlik_io::text::parse_size)]
        gpu_memory: Option<u64>,
        /// One JSON document (components and peak in bytes) instead of the table.
        #[arg(long)]
        json: bool,
        /// The training command and its arguments, as you would run it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Say which device --device picks on this machine: the NVIDIA GPUs the driver reports
    /// (name, compute capability, memory) or why there is none, then the choice. With --kernels,
    /// also compile every CUDA kernel with NVRTC for that GPU (loaded from the PTX cache when
    /// there; on the CPU: compiled for sm_90 without loading). No command runs on a GPU yet
    /// (issue 17); this is the first check on a GPU machine. Example: orlik device --device cuda
    /// --kernels
    Device {
        /// auto (the first GPU, else the CPU), cpu, cuda (the first GPU) or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Compile (or load from the cache) every CUDA kernel module and say how long it took.
        #[arg(long)]
        kernels: bool,
    },
    /// Compare training runs in one chart (PNG and SVG beside it): a metric of each run's
    /// metrics.jsonl against the step, the runs named in the legend.
    Curves {
        /// Run directories (outputs of distill / train).
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Metric: val_bits_per_byte, val_loss, val_kl, loss, ce, kl, grad_norm, lr...
        #[arg(long, default_value = "val_bits_per_byte")]
        key: String,
        /// Exponential moving average (0.9) over the points.
        #[arg(long)]
        smooth: bool,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Speed: prefill tokens/s at batch 1 x 512 and 8 x 128, decode tokens/s; with --train, a
    /// training step (forward + backward + AdamW) on random tokens instead.
    Bench {
        /// HF model directory.
        path: PathBuf,
        /// Timed repetitions per measurement (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        frozen: Frozen,
        /// Time training steps instead of inference.
        #[arg(long)]
        train: bool,
        /// Training batch (windows) for --train.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Training window length for --train.
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// With --train: activation checkpointing (see `orlik distill --help`).
        #[arg(long)]
        checkpoint_layers: bool,
    },
}

/// How a frozen model's weights are held (generate, bench, eval).
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct Frozen {
    /// Weights of the matrices (projections, embedding, lm_head) in memory: auto = the
    /// checkpoint's own (bf16 / f16 stay 16-bit, f32 stays f32), or f32, bf16, f16. 16-bit halves
    /// the memory and the bytes read per decoded token; products accumulate in f32 either way.
    /// On a GPU the weights are f32 so far (auto and f32 only).
    #[arg(long, default_value = "auto", value_parser = parse_compute_dtype)]
    pub(crate) compute_dtype: orlik_model::ComputeDtype,
    /// Where the model runs: cpu, cuda (the first NVIDIA GPU, or the local rank's), cuda:N, or
    /// auto (a GPU when there is one, else the CPU, saying why). The default stays cpu until the
    /// CUDA executor's GPU checks have run (scripts/gpu-check.sh; `orlik device` says what this
    /// machine has).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: orlik_cuda::DeviceChoice,
}

fn parse_device(s: &str) -> Result<orlik_cuda::DeviceChoice, String> {
    orlik_cuda::DeviceChoice::parse(s).map_err(|e| e.to_string())
}

fn parse_compute_dtype(s: &str) -> Result<orlik_model::ComputeDtype, String> {
    orlik_model::ComputeDtype::parse(s)
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Mean reward of greedy completions of prompts (JSONL {"prompt", "answer"}) under the
    /// verifiers of `orlik grpo` (accuracy for 0/1 rewards such as numeric or choice).
    Reward {
        /// HF model directory.
        path: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        /// exact, numeric, choice, regex:PATTERN, format:PATTERN or cmd:COMMAND (repeat to sum).
        #[arg(long, required = true)]
        reward: Vec<String>,
        /// First N prompts, 0 = all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long)]
        json: bool,
    },
    /// Perplexity and bits per byte of text files (each tokenized whole, scored in windows).
    Ppl {
        /// HF model directory.
        path: PathBuf,
        /// UTF-8 text files; results per file and pooled.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Window length in tokens.
        #[arg(long, default_value_t = 1024)]
        context: usize,
        /// Distance between window starts (default: = context, no overlap).
        #[arg(long)]
        stride: Option<usize>,
        /// Windows per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[command(flatten)]
        frozen: Frozen,
        #[arg(long)]
        json: bool,
    },
    /// Multiple choice by log-likelihood: each choice scored as a continuation of a Polish prompt
    /// ("Pytanie: ...\nOdpowiedź:"); accuracy raw and normalised by the choice's length in bytes.
    Mc {
        /// HF model directory.
        path: PathBuf,
        /// Questions in the EXAMS JSONL shape (question.stem, question.choices[].label/text, answerKey).
        #[arg(long)]
        tasks: PathBuf,
        /// First N questions, 0 = all.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Tokens of prompt + answer kept (cut from the left).
        #[arg(long, default_value_t = 512)]
        context: usize,
        #[command(flatten)]
        frozen: Frozen,
        #[arg(long)]
        json: bool,
    },
    /// How closely a student follows its teacher: KL(teacher || student) per token and top-1
    /// agreement of the next-token predictions (the same tokenizer, or a student vocabulary
    /// trimmed from the teacher's: compared on the student's tokens).
    Agree {
        /// Student HF directory.
        student: PathBuf,
        /// Teacher HF directory.
        #[arg(long)]
        teacher: PathBuf,
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Window length in tokens.
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// Compare at most this many tokens, 0 = all.
        #[arg(long, default_value_t = 16384)]
        max_tokens: usize,
        #[command(flatten)]
        frozen: Frozen,
        #[arg(long)]
        json: bool,
    },
    /// Prefill (256 tokens) and decode (32 tokens after 64) tokens/s at batch 1 and 8, all models
    /// measured in the same run (interleaved), with speed-ups over the first model.
    Speed {
        /// HF model directories; the first is the baseline.
        #[arg(required = true, num_args = 1..)]
        models: Vec<PathBuf>,
        /// Timed repetitions per measurement (median).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        frozen: Frozen,
        #[arg(long)]
        json: bool,
    },
}

/// Keep freed memory mapped and arenas committed: a forward pass allocates and frees the same
/// large activation buffers over and over, and returning them to the OS made the kernel zero
/// fresh pages every time (measured 10% of a prefill; ~20% faster prefill with these settings).
/// mimalloc v3 option ids: arena_eager_commit = 4, purge_delay = 15. Env vars still win.
fn tune_allocator() {
    // SAFETY: mi_option_set only stores an integer option.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(15, -1);
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            libmimalloc_sys::mi_option_set(4, 1);
        }
    }
}

/// candle asks for its thread count on every op; without RAYON_NUM_THREADS it re-reads
/// /proc/cpuinfo each time (~3% of a prefill, far more of a decode step). Pin it once.
fn pin_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Ranks on one machine share its cores (N ranks × all cores would oversubscribe).
        let local = orlik_dist::launch_from(&|k| std::env::var(k).ok()).map_or(1, |l| l.local_size);
        let n = (n / local.max(1)).max(1);
        // SAFETY: called first thing in main, before any thread exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Run the command on one of rayon's workers instead of the main thread. A parallel op (candle's,
/// gemm's, the executors') called from outside the pool is injected into it while the caller
/// sleeps until it is done: two context switches per op, ~1300 per decoded token of SmolLM2
/// (perf, issue 21). Called from a worker it runs in place and the other workers steal; decode
/// measured +19% (`orlik bench`, alternating rounds). The workers get an 8 MiB stack, as the
/// main thread has (parsers recurse). MPI is initialised THREAD_SERIALIZED, so its calls may come
/// from this thread.
fn on_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // Fails only when a pool exists already (nothing builds one before this): then use it.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    rayon::scope(|_| f())
}

/// Run a resolved recipe on this terminal; an interrupted training stage exits 130.
fn pipeline(r: orlik_pipeline::Recipe, resume: bool, force: bool) -> anyhow::Result<()> {
    let ui = term::Term::new();
    let started = std::time::Instant::now();
    let opts = orlik_pipeline::Options {
        resume,
        force,
        stop: Some(term::stop_flag()),
        after_step: term::step_delay(),
        memory: term::memory_gate(),
        ui: &ui,
    };
    match orlik_pipeline::run(&r, &opts)? {
        orlik_pipeline::Outcome::Interrupted { step, .. } => term::interrupted(step),
        orlik_pipeline::Outcome::Finished { table } => {
            println!("{table}");
            let secs = started.elapsed().as_secs_f64();
            println!("report: {} ({secs:.0} s this session)", r.output.join("report.md").display());
            Ok(())
        }
    }
}

/// `orlik ... | head`: a closed stdout ends the process quietly with 141 (128 + SIGPIPE), as a
/// Unix tool does, instead of `println!`'s panic and backtrace. SIGPIPE itself stays ignored
/// (Rust's default): a reward command that exits without reading its stdin must be an error
/// of the run, not a signal that kills it.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() {
    quiet_on_closed_stdout();
    pin_threads();
    tune_allocator();
    orlik_io::guard::install_sigbus_handler();
    // A bad flag is a user error like any other: exit 1 (clap's own default is 2); --help and
    // --version print and exit 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print(); // --help, --version
                std::process::exit(0);
            }
            // One line, like every other error: the message, its possible values and tip.
            let text = e.render().to_string();
            let kept: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("{} (see --help)", kept.join(" "));
            std::process::exit(1);
        }
    };
    term::set_memory_gate(cli.no_memory_check, cli.memory_limit);
    let world = join_world(&cli.cmd);
    let r = on_worker(|| dispatch(cli.cmd));
    if let Err(e) = r {
        orlik_io::output::abandon_unused();
        if world.size() > 1 {
            // Every rank says its own error (one may fail alone); MPI_Abort ends the others.
            eprintln!("error (rank {} of {}): {}", world.rank(), world.size(), one_line(&e));
            world.abort(1);
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
    world.finalize();
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Inspect { path, json } => {
            orlik_io::inspect::run(&path, json).map(|s| println!("{s}")).map_err(Into::into)
        }
        Cmd::Convert { gguf, output, dtype, max_shard_size, force } => {
            commands::convert(&gguf, &output, &dtype, &max_shard_size, force)
        }
        Cmd::Export { model, gguf, ty, force } => commands::export(&model, &gguf, &ty, force),
        Cmd::Generate {
            path,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            chat,
            json,
            frozen,
        } => {
            let opts =
                orlik_eval::generate::GenOptions { max_new_tokens, temperature, top_p, seed };
            commands::generate(&commands::GenArgs {
                path: &path,
                prompt: &prompt,
                opts,
                chat,
                json,
                frozen,
            })
        }
        Cmd::Eval { what: EvalCmd::Ppl { path, text, context, stride, batch, frozen, json } } => {
            let stride = stride.unwrap_or(context);
            eval_cmd::ppl(&path, &text, context, stride, batch, frozen, json)
        }
        Cmd::TrimVocab { model, data, min_count, keep, output, force } => {
            let a = orlik_prune::trim::TrimArgs { model, data, min_count, keep, output, force };
            orlik_prune::trim::run(&a).map(|said| println!("{said}")).map_err(Into::into)
        }
        Cmd::Eval {
            what: EvalCmd::Reward { path, prompts, reward, limit, max_new_tokens, json },
        } => align_cmd::eval_reward(&path, &prompts, &reward, limit, max_new_tokens, json),
        Cmd::Sft(a) => align_cmd::sft(a),
        Cmd::Dpo(a) => align_cmd::dpo(a),
        Cmd::Grpo(a) => align_cmd::grpo(a),
        Cmd::Eval { what: EvalCmd::Mc { path, tasks, limit, context, frozen, json } } => {
            eval_cmd::mc(&path, &tasks, limit, context, frozen, json)
        }
        Cmd::Eval {
            what: EvalCmd::Agree { student, teacher, text, context, max_tokens, frozen, json },
        } => eval_cmd::agree(&student, &teacher, &text, context, max_tokens, frozen, json),
        Cmd::Eval { what: EvalCmd::Speed { models, reps, frozen, json } } => {
            eval_cmd::speed(&models, reps, frozen, json)
        }
        Cmd::Compress {
            teacher,
            params,
            data,
            val,
            tokens,
            mc_tasks,
            export_gguf,
            sets,
            output,
            resume,
            force,
        } => orlik_pipeline::Quick {
            teacher,
            params,
            data,
            val,
            tokens,
            mc_tasks,
            export_gguf,
            output,
        }
        .recipe(&sets)
        .map_err(Into::into)
        .and_then(|r| pipeline(r, resume, force)),
        Cmd::Run { recipe, sets, output, resume, force } => std::fs::read_to_string(&recipe)
            .map_err(|e| anyhow::anyhow!("{}: {e}", recipe.display()))
            .and_then(|text| {
                let mut r =
                    orlik_pipeline::Recipe::parse(&text, &recipe.display().to_string(), &sets)?;
                if let Some(o) = output {
                    r.output = o;
                }
                Ok(r.resolve()?)
            })
            .and_then(|r| pipeline(r, resume, force)),
        Cmd::Bench { path, reps, json, train: true, batch, seq_len, checkpoint_layers, frozen } => {
            let device = frozen.device.to_string();
            train_cmd::bench_train(&path, batch, seq_len, reps, checkpoint_layers, &device, json)
        }
        Cmd::Bench { path, reps, json, frozen, .. } => commands::bench(&path, reps, frozen, json),
        Cmd::Distill { teacher, student, teacher_cache, train, kd } => {
            train_cmd::distill(train_cmd::DistillArgs {
                teacher,
                student,
                teacher_cache,
                train,
                kd,
            })
        }
        Cmd::Curves { runs, key, smooth, output } => {
            orlik_train::curves::compare(&runs, &key, smooth, &output)
                .map(|runs| {
                    let svg = output.with_extension("svg");
                    println!(
                        "wrote {} and {}: {}",
                        output.display(),
                        svg.display(),
                        runs.join(", ")
                    )
                })
                .map_err(Into::into)
        }
        Cmd::Train { model, init, train } => train_cmd::train(&model, &init, train),
        Cmd::TeacherCache(a) => train_cmd::teacher_cache(a),
        Cmd::Tokenize(a) => train_cmd::tokenize(a),
        Cmd::Mem { gpu_memory, json, command } => mem_cmd::run(&command, gpu_memory, json),
        Cmd::Device { device, kernels } => device_cmd::run(&device, kernels),
        Cmd::Score(a) => prune_cmd::score_cmd(a),
        Cmd::Prune(a) => prune_cmd::prune_cmd(a),
        Cmd::Sweep(a) => prune_cmd::sweep_cmd(a),
    }
}

/// The commands that run data parallel under a launcher (`mpirun -np N orlik distill ...`).
fn data_parallel(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Distill { .. }
            | Cmd::Train { .. }
            | Cmd::Sft(_)
            | Cmd::Dpo(_)
            | Cmd::Grpo(_)
            | Cmd::Score(_)
            | Cmd::TeacherCache(_)
            | Cmd::Compress { .. }
            | Cmd::Run { .. }
    )
}

/// Join the launcher's job (world size 1 without one). Ranks past 0 print nothing on stdout;
/// a command that does not run data parallel is refused on a world of more than one (N copies
/// would write the same output).
fn join_world(cmd: &Cmd) -> &'static dyn orlik_dist::Comm {
    let world = match orlik_dist::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if world.size() > 1 && !data_parallel(cmd) {
        if world.rank() == 0 {
            eprintln!(
                "error: this command does not run data parallel (only distill, train, sft, dpo, \
                 grpo, score, teacher-cache, compress and run do); start it without mpirun / srun"
            );
        } else {
            // Rank 0 says why and ends the job; aborting here first could kill it unsaid.
            let _ = world.barrier();
        }
        world.abort(1);
    }
    if world.rank() > 0 {
        silence_stdout();
    }
    world
}

fn silence_stdout() {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    if let Ok(f) = null {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces stdout with /dev/null; both descriptors are open.
        unsafe { libc::dup2(f.as_raw_fd(), 1) };
    }
}

/// An error and its causes on one line, each piece of context said once: a context that the
/// next cause already contains (a path that the inner error names again) is dropped, and so is
/// a cause that its context already contains.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if parts.last().is_some_and(|p| p.contains(cause.as_str())) {
            continue;
        }
        while parts.last().is_some_and(|p| cause.contains(p.as_str())) {
            parts.pop();
        }
        parts.push(cause);
    }
    parts.join(": ").replace('\n', " ")
}
