//! convert, export, generate, bench.

use anyhow::{bail, Result};
use candle_core::DType;
use orlik_eval::generate::GenOptions;
use orlik_io::hfdir::{HfModel, SaveOptions};
use std::io::Write;
use std::path::Path;

pub fn convert(gguf: &Path, out: &Path, dtype: &str, max_shard: &str, force: bool) -> Result<()> {
    let dtype = match dtype {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let max_shard_bytes = orlik_io::text::parse_size(max_shard).map_err(anyhow::Error::msg)?;
    let opts = SaveOptions { dtype, max_shard_bytes, overwrite: force, kind: "convert" };
    let pb = crate::term::counter(0, "dequantize");
    let rep = orlik_io::convert::run(gguf, out, &opts, |i, n, name| {
        crate::term::show(&pb, if i == n { name } else { "dequantize" }, i, n)
    })?;
    pb.finish_and_clear();
    for name in &rep.licences {
        eprintln!("licence: {name} copied into {}", out.display());
    }
    eprintln!("{}", rep.summary(gguf, out));
    Ok(())
}

pub fn export(model: &Path, out: &Path, ty: &str, force: bool) -> Result<()> {
    let ty = orlik_io::export::GgufType::parse(ty).map_err(anyhow::Error::msg)?;
    let pb = crate::term::counter(0, "export");
    let rep = orlik_io::export::run(model, out, ty, force, |i, n, name| {
        crate::term::show(&pb, if i == n { name } else { "export" }, i, n)
    })?;
    pb.finish_and_clear();
    for p in &rep.licences {
        eprintln!("licence: {} written beside the GGUF", p.display());
    }
    for (why, names) in &rep.fallbacks {
        let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let more =
            if names.len() > 3 { format!(", ... ({} in all)", names.len()) } else { String::new() };
        eprintln!("stored as {why}: {shown}{more}");
    }
    for n in &rep.notes {
        eprintln!("note: {n}");
    }
    eprintln!("{}", rep.summary(out));
    Ok(())
}

/// A frozen model on the device `frozen.device` picks (`orlik_cuda::frozen`), said on stderr
/// when it is not the plain f32 CPU model. Returns the compute dtype it really runs at.
pub(crate) fn load_on(
    path: &Path,
    frozen: crate::Frozen,
) -> Result<(HfModel, Box<dyn orlik_model::Infer>, orlik_model::ComputeDtype)> {
    if frozen.device == orlik_cuda::DeviceChoice::Auto {
        let local = orlik_dist::world().local_rank();
        crate::term::notice(&orlik_cuda::device::resolve(frozen.device, local)?.describe());
    }
    let hf = HfModel::open(path)?;
    let local = orlik_dist::world().local_rank();
    let f = orlik_cuda::frozen::load(&hf, frozen.compute_dtype, &frozen.device.to_string(), local)?;
    if let Some(said) = &f.said {
        crate::term::notice(&format!("{}: {said}", path.display()));
    }
    Ok((hf, f.model, f.compute))
}

/// `orlik generate`'s flags.
pub struct GenArgs<'a> {
    pub path: &'a Path,
    pub prompt: &'a str,
    pub opts: GenOptions,
    pub chat: bool,
    /// One JSON object on stdout at the end (the text, and every token with its two best logits)
    /// instead of the streamed text.
    pub json: bool,
    pub frozen: crate::Frozen,
}

/// A generated token as `--json` reports it: the step, and how many characters of the decoded
/// continuation stand once it is added (so a character offset maps back to a token).
#[derive(serde::Serialize)]
struct JsonStep {
    #[serde(flatten)]
    step: orlik_eval::generate::Step,
    chars: usize,
}

pub fn generate(a: &GenArgs) -> Result<()> {
    let GenOptions { temperature, top_p, .. } = a.opts;
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        bail!("--top-p must be in (0, 1], got {top_p}");
    }
    if temperature < 0.0 {
        bail!("--temperature must be >= 0, got {temperature}");
    }
    let (hf, model, _) = load_on(a.path, a.frozen)?;
    let tok = hf.tokenizer()?;
    let text = if a.chat {
        format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", a.prompt)
    } else {
        a.prompt.to_string()
    };
    let enc = tok
        .encode(text.as_str(), true)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let mut stop = hf.config.eos_ids();
    for s in ["<|im_end|>", "<|endoftext|>", "</s>"] {
        if let Some(id) = tok.token_to_id(s) {
            if a.chat || s != "<|im_end|>" {
                stop.push(id);
            }
        }
    }
    let mut ids: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut steps = Vec::new();
    let mut out = std::io::stdout();
    if !a.json {
        print!("{}{}", a.prompt, if a.chat { "\n" } else { "" });
    }
    let t0 = std::time::Instant::now();
    let new =
        orlik_eval::generate::generate(model.as_ref(), enc.get_ids(), &stop, &a.opts, |step| {
            if stop.contains(&step.id) {
                return false;
            }
            ids.push(step.id);
            // Decode everything so far and print the new suffix: byte-fallback and multi-byte
            // characters only appear once complete.
            if let Ok(s) = tok.decode(&ids, true) {
                if !s.ends_with('\u{FFFD}') && s.len() > printed && s.is_char_boundary(printed) {
                    if !a.json {
                        print!("{}", &s[printed..]);
                        let _ = out.flush();
                    }
                    printed = s.len();
                }
                steps.push(JsonStep { step: *step, chars: s[..printed].chars().count() });
            }
            true
        })?;
    let rate = new.len() as f64 / t0.elapsed().as_secs_f64();
    if a.json {
        let text = tok.decode(&ids, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        let v = serde_json::json!({
            "prompt": a.prompt, "prompt_ids": enc.get_ids(), "text": text, "steps": steps,
        });
        println!("{v}");
    } else {
        println!();
    }
    eprintln!("[{} tokens, {rate:.1} tokens/s]", new.len());
    Ok(())
}

pub fn bench(path: &Path, reps: usize, frozen: crate::Frozen, json: bool) -> Result<()> {
    let (_, model, _) = load_on(path, frozen)?;
    let model = model.as_ref();
    let t = vec![
        orlik_eval::speed::prefill(model, 1, 512, reps)?,
        orlik_eval::speed::prefill(model, 8, 128, reps)?,
        orlik_eval::speed::decode(model, 1, 16, 64, reps)?,
    ];
    if json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        for x in &t {
            println!("{:32} {:>10.1} tokens/s", x.what, x.tokens_per_s);
        }
    }
    Ok(())
}
