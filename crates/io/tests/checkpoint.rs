//! Checkpoint IO: load(save(m)) is bit-exact (single file and sharded, every dtype), and every kind
//! of bad input is a clear error naming the file and tensor, with nothing half-written.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use candle_core::{DType, Device, Tensor};
use orlik_io::hfdir::{save_pretrained, side_files, HfModel, SaveOptions};
use orlik_io::safetensors::Checkpoint;
use orlik_model::ModelOptions;
use std::fs;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

fn bits(t: &Tensor) -> Vec<u8> {
    orlik_io::safetensors::tensor_bytes(t, t.dtype()).unwrap()
}

#[test]
fn save_then_load_is_bit_exact_single_and_sharded() {
    for (name, dtype) in [("llama", DType::F32), ("qwen2", DType::BF16), ("mistral", DType::F32)] {
        let src = HfModel::open(&fixture(name)).unwrap();
        let tensors: Vec<(String, Tensor)> = src
            .checkpoint
            .infos()
            .map(|i| (i.name.clone(), src.checkpoint.tensor(&i.name).unwrap()))
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        for (shard, expect_index) in [(u64::MAX, false), (10_000, true)] {
            let out = tmp.path().join(format!("{name}-{shard}"));
            let files = side_files(&fixture(name)).unwrap();
            let opts =
                SaveOptions { dtype, max_shard_bytes: shard, overwrite: false, kind: "test" };
            save_pretrained(&out, &src.config, &tensors, &files, &opts).unwrap();
            assert_eq!(
                out.join("model.safetensors.index.json").exists(),
                expect_index,
                "{name} {shard}"
            );
            let back = HfModel::open(&out).unwrap();
            assert_eq!(back.config.hidden_size, src.config.hidden_size);
            for (n, t) in &tensors {
                let b = back.checkpoint.tensor(n).unwrap();
                assert_eq!(b.dtype(), dtype);
                assert_eq!(b.dims(), t.dims());
                assert_eq!(
                    bits(&b),
                    bits(&t.to_dtype(dtype).unwrap()),
                    "{name}: {n} not bit-exact"
                );
            }
            // and the loaded model computes the same logits
            let ids = Tensor::new(&[[3u32, 7, 9, 11]], &Device::Cpu).unwrap();
            let a =
                src.load(ModelOptions::default()).unwrap().forward(&ids, None, None, None).unwrap();
            let b = back
                .load(ModelOptions::default())
                .unwrap()
                .forward(&ids, None, None, None)
                .unwrap();
            assert_eq!(bits(&a), bits(&b));
        }
    }
}

fn err_of(dir: &Path) -> String {
    match HfModel::open(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Write a one-tensor safetensors file with a hand-made header.
fn write_raw(path: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    fs::write(path, b).unwrap();
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    copy_dir(&fixture("llama"), &base);
    fs::remove_file(base.join("golden.safetensors")).unwrap();
    let st = base.join("model.safetensors");
    let full = fs::read(&st).unwrap();

    // truncated file
    let d = tmp.path().join("trunc");
    copy_dir(&base, &d);
    fs::write(d.join("model.safetensors"), &full[..full.len() - 100]).unwrap();
    let e = err_of(&d);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    // header length absurdly large
    let d = tmp.path().join("huge");
    copy_dir(&base, &d);
    let mut b = full.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(d.join("model.safetensors"), b).unwrap();
    assert!(err_of(&d).contains("header too large"), "{}", err_of(&d));

    // duplicate tensor inside one header
    let d = tmp.path().join("dup");
    copy_dir(&base, &d);
    let h = r#"{"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    write_raw(&d.join("model.safetensors"), h, &[0; 8]);
    let e = err_of(&d);
    assert!(e.contains("duplicate tensor model.norm.weight"), "{e}");

    // dtype not supported / not float
    let d = tmp.path().join("dtype");
    copy_dir(&base, &d);
    write_raw(
        &d.join("model.safetensors"),
        r#"{"model.norm.weight":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let e = err_of(&d);
    assert!(e.contains("model.norm.weight") && e.contains("I8"), "{e}");

    // shape mismatch vs config
    let d = tmp.path().join("shape");
    copy_dir(&base, &d);
    let cfg = fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 48", "\"intermediate_size\": 40");
    fs::write(d.join("config.json"), cfg).unwrap();
    let e = err_of(&d);
    assert!(
        e.contains("model.layers.0.mlp.down_proj.weight: expected shape [32, 40], found [32, 48]"),
        "{e}"
    );

    // unknown architecture
    let d = tmp.path().join("arch");
    copy_dir(&base, &d);
    let cfg = fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "GPT2LMHeadModel");
    fs::write(d.join("config.json"), cfg).unwrap();
    let e = err_of(&d);
    assert!(
        e.contains("config.json") && e.contains("GPT2LMHeadModel") && e.contains("supported"),
        "{e}"
    );

    // missing shard of a sharded checkpoint; duplicate across shards
    let d = tmp.path().join("shard");
    copy_dir(&fixture("mistral"), &d);
    fs::remove_file(d.join("model-00003-of-00005.safetensors")).unwrap();
    let e = err_of(&d);
    assert!(e.contains("model-00003-of-00005.safetensors") && e.contains("missing"), "{e}");
    let d = tmp.path().join("dup2");
    copy_dir(&fixture("mistral"), &d);
    fs::copy(
        d.join("model-00002-of-00005.safetensors"),
        d.join("model-00003-of-00005.safetensors"),
    )
    .unwrap();
    let e = err_of(&d);
    assert!(e.contains("duplicate tensor"), "{e}");

    // extra tensor not in config, and missing tensor
    let d = tmp.path().join("extra");
    copy_dir(&base, &d);
    let ck = Checkpoint::open(&d).unwrap();
    let mut t: Vec<(String, Tensor)> =
        ck.infos().map(|i| (i.name.clone(), ck.tensor(&i.name).unwrap())).collect();
    drop(ck);
    t.push((
        "model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    ));
    orlik_io::safetensors::write_shards(&d, &t, DType::F32, u64::MAX).unwrap();
    assert!(err_of(&d).contains("unexpected tensor model.layers.9.mlp.up_proj.weight"));
    t.pop();
    t.retain(|(n, _)| n != "model.norm.weight");
    orlik_io::safetensors::write_shards(&d, &t, DType::F32, u64::MAX).unwrap();
    assert!(err_of(&d).contains("missing tensor model.norm.weight (expected shape [32])"));
}

#[test]
fn failed_save_leaves_no_directory() {
    let src = HfModel::open(&fixture("llama")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = src
        .checkpoint
        .infos()
        .map(|i| (i.name.clone(), src.checkpoint.tensor(&i.name).unwrap()))
        .collect();
    tensors.retain(|(n, _)| n != "model.norm.weight"); // invalid for the config
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let opts = SaveOptions {
        dtype: DType::F32,
        max_shard_bytes: u64::MAX,
        overwrite: false,
        kind: "test",
    };
    assert!(save_pretrained(&out, &src.config, &tensors, &[], &opts).is_err());
    assert!(!out.exists());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// The content hash is memoised per process, but a rewritten file (new length or mtime) is
/// hashed again.
#[test]
fn content_hash_is_reused_until_a_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("llama"), &dir);
    let a = HfModel::open(&dir).unwrap().content_sha256().unwrap();
    assert_eq!(HfModel::open(&dir).unwrap().content_sha256().unwrap(), a);
    let cfg = dir.join("config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("{text}\n")).unwrap();
    let b = HfModel::open(&dir).unwrap().content_sha256().unwrap();
    assert_ne!(a, b, "config.json changed, so must the hash");
    assert_eq!(b, orlik_io::hfdir::sha256_files(&[cfg, dir.join("model.safetensors")]).unwrap());
}
