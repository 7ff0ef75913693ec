"""Reference values for orlik's distillation losses (crates/train/src/losses.rs), from PyTorch.

Each case: student logits z_s, teacher logits z_t, temperature T, loss (fkl, rkl, jsd with beta),
top-k (0 = full vocabulary; else the teacher's top-k plus a tail bucket), CE weight and target;
the expected loss and its gradient with respect to z_s by autograd, in float64. Formulas written
independently of the Rust code: KL via F.kl_div, JSD with the mixture in log space (as in TRL's
generalized JSD).

    ~/.cache/orlik/pyenv/bin/python scripts/gen_loss_reference.py > tests/fixtures/losses.json
"""
import json
import math

import torch
import torch.nn.functional as F

torch.manual_seed(0)


def buckets(logp, ids):
    """Log-mass of each top-k token and of the rest (tail)."""
    if ids is None:
        return logp
    mask = torch.ones_like(logp, dtype=torch.bool)
    mask[ids] = False
    tail = torch.logsumexp(logp[mask], dim=0) if mask.any() else torch.tensor(-math.inf, dtype=logp.dtype)
    return torch.cat([logp[ids], tail.reshape(1)])


def divergence(kind, ls, lt, beta):
    if kind == "fkl":
        return F.kl_div(ls, lt, log_target=True, reduction="sum")  # sum p_t (log p_t - log p_s)
    if kind == "rkl":
        return F.kl_div(lt, ls, log_target=True, reduction="sum")
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), dim=0)
    return beta * F.kl_div(lm, lt, log_target=True, reduction="sum") + (1 - beta) * F.kl_div(
        lm, ls, log_target=True, reduction="sum"
    )


cases = []
V = 12
for kind in ["fkl", "rkl", "jsd"]:
    for T in [1.0, 2.0]:
        for topk in [0, 4]:
            for ce_w in [0.0, 0.5]:
                zs = (torch.randn(V) * 2).double().requires_grad_(True)  # f32-representable
                zt = (torch.randn(V) * 2).double()
                beta = 0.3
                target = int(torch.randint(0, V, (1,)))
                lt_full = F.log_softmax(zt / T, dim=-1)
                ids = None if topk == 0 else torch.topk(lt_full, topk).indices
                ls = buckets(F.log_softmax(zs / T, dim=-1), ids)
                lt = buckets(lt_full, ids)
                loss = T * T * divergence(kind, ls, lt, beta)
                ce = -F.log_softmax(zs, dim=-1)[target]
                total = loss + ce_w * ce
                (g,) = torch.autograd.grad(total, zs)
                cases.append(
                    {
                        "loss": kind,
                        "temperature": T,
                        "beta": beta,
                        "topk": topk,
                        "ce_weight": ce_w,
                        "target": target,
                        "z_student": [float(x) for x in zs.detach().float()],
                        "z_teacher": [float(x) for x in zt.float()],
                        "kd": float(loss.detach()),
                        "ce": float(ce.detach()),
                        "grad": [float(x) for x in g],
                    }
                )
print(json.dumps({"format_version": 1, "generated_by": "$ORLIK_CACHE/pyenv/bin/python scripts/gen_loss_reference.py > tests/fixtures/losses.json", "generator": "scripts/gen_loss_reference.py", "torch": torch.__version__, "cases": cases}, indent=1))
