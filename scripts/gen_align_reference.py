#!/usr/bin/env python3
"""Reference values for orlik-align's losses, computed with PyTorch autograd in float64.

    $ORLIK_CACHE/pyenv/bin/python scripts/gen_align_reference.py > tests/fixtures/align_losses.json

DPO (sigmoid), IPO and DPO-Positive (Smaug, arXiv 2402.13228) written as in TRL's DPOTrainer;
GRPO's clipped objective with k3 KL and group-normalised advantages as in TRL's GRPOTrainer
("grpo" loss: per-sequence token mean; Dr. GRPO: unscaled advantages, token sum / max_len).
"""
import json

import torch

torch.set_default_dtype(torch.float64)
F = torch.nn.functional


def dpo_case(pc, pr, rc, rr, beta, lam, kind):
    pc_t, pr_t = torch.tensor(pc, requires_grad=True), torch.tensor(pr, requires_grad=True)
    h = (pc_t - rc) - (pr_t - rr)
    if kind == "sigmoid":
        loss = -F.logsigmoid(beta * h)
    elif kind == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    else:  # dpop
        penalty = lam * torch.clamp(rc - pc_t, min=0)
        loss = -F.logsigmoid(beta * (h - penalty))
    loss.backward()
    return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "beta": beta, "lambda": lam, "loss_type": kind,
            "loss": loss.item(), "grad_pc": pc_t.grad.item(), "grad_pr": pr_t.grad.item()}


def grpo_case(seed, group, n_groups, lens, eps_low, eps_high, beta, dr, max_len):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (group * n_groups,), generator=g).double()
    r = rewards.view(-1, group)
    adv = r - r.mean(1, keepdim=True)
    if not dr:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    adv = adv.flatten()
    news, olds, refs, grads = [], [], [], []
    total = 0.0
    leaves = []
    for i in range(group * n_groups):
        n = lens[i % len(lens)]
        old = -torch.rand(n, generator=g) * 3
        new = (old + (torch.rand(n, generator=g) - 0.5) * 0.8).requires_grad_(True)
        ref = old + (torch.rand(n, generator=g) - 0.5) * 0.4
        ratio = torch.exp(new - old)
        clip = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
        per = -torch.min(ratio * adv[i], clip * adv[i])
        if beta != 0:
            x = ref - new
            per = per + beta * (torch.exp(x) - x - 1)
        seq = per.sum() / (max_len if dr else n)
        total = total + seq / (group * n_groups)
        leaves.append(new)
        news.append(new.tolist()); olds.append(old.tolist()); refs.append(ref.tolist())
    total.backward()
    grads = [t.grad.tolist() for t in leaves]
    return {"group": group, "rewards": rewards.tolist(), "advantages": adv.tolist(), "new": news, "old": olds,
            "ref": refs, "eps_low": eps_low, "eps_high": eps_high, "beta": beta, "dr_grpo": dr, "max_len": max_len,
            "loss": total.item(), "grads": grads}


def main():
    dpo = []
    for kind in ("sigmoid", "ipo", "dpop"):
        for (pc, pr, rc, rr) in [(-10.0, -12.0, -11.0, -11.5), (-30.0, -20.0, -25.0, -26.0), (-5.0, -5.5, -4.0, -9.0)]:
            dpo.append(dpo_case(pc, pr, rc, rr, 0.1, 50.0 if kind == "dpop" else 0.0, kind))
    dpo.append(dpo_case(-300.0, -100.0, -100.0, -300.0, 0.5, 5.0, "dpop"))  # saturated sigmoid
    grpo = [grpo_case(1, 4, 2, [5, 3, 7], 0.2, 0.2, 0.0, False, 8),
            grpo_case(2, 4, 2, [5, 3, 7], 0.2, 0.28, 0.04, False, 8),
            grpo_case(3, 3, 2, [6, 2], 0.2, 0.2, 0.0, True, 10),
            grpo_case(4, 2, 3, [4], 0.1, 0.3, 0.1, True, 4)]
    print(json.dumps({"format_version": 1, "generated_by": "$ORLIK_CACHE/pyenv/bin/python scripts/gen_align_reference.py > tests/fixtures/align_losses.json", "dpo": dpo, "grpo": grpo}, indent=1))


if __name__ == "__main__":
    main()
