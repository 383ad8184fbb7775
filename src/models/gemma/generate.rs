//! Decoding with a [`Gemma`] model.

use tch::{Device, Tensor};

use super::model::Gemma;
use crate::error::{Error, Result};

/// Greedy decoding without a KV cache (each step reruns the forward pass: fine for short answers).
///
/// `prompts`: token ids per prompt (non-empty, each id in `[0, V)`), batched with right padding with
/// `pad_id`. Each row gets up to `max_new_tokens` argmax tokens; a row stops after emitting `eos_id` (the
/// eos is not returned). Runs under `no_grad` on `device`. Returns the generated ids per prompt.
/// Errors: [`Error::Shape`] for an empty prompt; those of [`Gemma::forward`].
pub fn greedy_decode(
    model: &Gemma,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    eos_id: i64,
    pad_id: i64,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Shape {
            arg: "prompts",
            expected: format!("a non-empty prompt at index {i}"),
            got: vec![0],
        });
    }
    let rows = prompts.len();
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let width = lengths.iter().max().copied().unwrap_or(0) + max_new_tokens;
    let mut ids = vec![pad_id; rows * width];
    let mut mask = vec![0i64; rows * width];
    for (r, prompt) in prompts.iter().enumerate() {
        ids[r * width..r * width + prompt.len()].copy_from_slice(prompt);
        mask[r * width..r * width + prompt.len()].fill(1);
    }
    let mut generated = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    tch::no_grad(|| -> Result<()> {
        for _ in 0..max_new_tokens {
            if done.iter().all(|d| *d) {
                break;
            }
            let t = lengths.iter().max().copied().unwrap_or(0);
            let input = Tensor::from_slice(&ids)
                .f_view([rows as i64, width as i64])?
                .f_narrow(1, 0, t as i64)?;
            let attention = Tensor::from_slice(&mask)
                .f_view([rows as i64, width as i64])?
                .f_narrow(1, 0, t as i64)?;
            let logits = model.forward(&input.f_to_device(device)?, &attention.f_to_device(device)?)?;
            let last: Vec<i64> = lengths.iter().map(|l| *l as i64 - 1).collect();
            let index = Tensor::from_slice(&last)
                .f_to_device(device)?
                .f_view([rows as i64, 1, 1])?
                .f_expand([rows as i64, 1, logits.size()[2]], false)?;
            let next = logits
                .f_gather(1, &index, false)?
                .f_squeeze_dim(1)?
                .f_argmax(-1, false)?;
            let next = Vec::<i64>::try_from(next.f_to_device(Device::Cpu)?)?;
            for r in 0..rows {
                if done[r] {
                    continue;
                }
                if next[r] == eos_id {
                    done[r] = true;
                    continue;
                }
                generated[r].push(next[r]);
                ids[r * width + lengths[r]] = next[r];
                mask[r * width + lengths[r]] = 1;
                lengths[r] += 1;
            }
        }
        Ok(())
    })?;
    Ok(generated)
}
