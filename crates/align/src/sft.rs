//! Supervised fine-tuning on conversations: cross-entropy on the assistant's tokens only, one
//! conversation per row (no packing, so no attention across conversations), rows right-padded.
//! The loss of a micro-batch is the mean over its assistant tokens.

use crate::AlignError;
use orlik_train::runner::{Micro, Task};
use orlik_train::seqlogp::{self, Rows};
use orlik_train::Executor;

pub struct Sft {
    /// Token ids of each conversation and whether each id is the assistant's.
    pub examples: Vec<(Vec<u32>, Vec<bool>)>,
    pub pad: u32,
    pub chunk: usize,
}

impl Task for Sft {
    type Error = AlignError;

    fn units(&self) -> usize {
        self.examples.len()
    }

    fn micro(
        &mut self,
        e: &mut dyn Executor,
        units: &[usize],
        _step: u64,
        scale: f32,
    ) -> Result<Micro, AlignError> {
        let mut rows = Rows { inputs: Vec::new(), targets: Vec::new(), pad: self.pad };
        let mut masks = Vec::new();
        for &u in units {
            let (ids, mask) = &self.examples[u];
            rows.inputs.push(ids[..ids.len() - 1].to_vec());
            rows.targets.push(ids[1..].to_vec());
            masks.push(mask[1..].to_vec());
        }
        let n = masks.iter().flatten().filter(|&&m| m).count().max(1);
        let f = seqlogp::forward_train(e, &rows, self.chunk)?;
        let sum: f64 = seqlogp::masked_sums(&f.logp, &masks).iter().sum();
        let coeff: Vec<Vec<f32>> = masks
            .iter()
            .map(|m| m.iter().map(|&b| if b { -scale / n as f32 } else { 0.0 }).collect())
            .collect();
        seqlogp::backward(e, f, &coeff, self.chunk)?;
        Ok(Micro {
            loss: -sum / n as f64,
            tokens: n as u64,
            metrics: vec![("assistant_tokens", n as f64)],
        })
    }
}
