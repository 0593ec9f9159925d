"""Where the discriminator's collapse comes from, and whether removing it helps (record script).

    python records/2026-11-29_discriminator-context/common_mode.py chain 1500 "[10,20,40,60,100,150]"
    python records/2026-11-29_discriminator-context/common_mode.py chain 1500 "[150,500,1000,1500]" bias0=-1.9
    python records/2026-11-29_discriminator-context/common_mode.py chain 1500 "[150,500,1000,1500]" center=True

Trains the chain probe (probe_config, seed 0) with the real eager train step and prints, at the
given steps, per discriminator layer: the common mode of the states across held-out tokens
(|mean| / rms deviation from it; 0.8 fresh), the last FFN's output weights applied to its mean
GELU activation (|W2 h̄|, and |dW2 h̄| for the change since initialisation), its bias, and the
held-out AUCs. Options: bias0=x (output bias at init), center=True (the RTD head sees each
sequence's states minus their mean over tokens, so a common mode cannot move its logits).
"""
import ast
import copy
import sys

import torch
import torch.nn.functional as F

from electra_fn import diagnostics as D, layers as Lyr, model as M, pretrain
from electra_fn.data import synthetic

torch.set_num_threads(1)
task, steps, marks = sys.argv[1], int(sys.argv[2]), ast.literal_eval(sys.argv[3])
kw = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
bias0, center = kw.pop("bias0", None), kw.pop("center", False)
if center:
    head = M.discriminator_head
    M.discriminator_head = lambda params, h: head(params, h - h.mean(1, keepdim=True))
cfg = D.probe_config(steps=steps, **kw)
params = M.init_params(cfg.model, 0)
if bias0 is not None:
    params["discriminator"]["head"]["out"]["bias"] = torch.tensor([float(bias0)])
params0 = copy.deepcopy(params)
opt = pretrain.init_opt_state(params, cfg)
step = pretrain.make_train_step(cfg, grad_route="autograd")
evaluate = pretrain.make_eval_step(cfg, proposals={
    "uniform": pretrain.proposal_logits("uniform", cfg.model.vocab_size)})
held = synthetic.corpus(task, 128, 32, 64, seed=2**40)
mask = torch.ones_like(held)


def tokens(u):  # [B, L, H] -> [N, H] without [CLS]/[SEP]
    return u[:, 1:-1].reshape(-1, u.shape[-1])


def common_mode(u):
    t = tokens(u)
    m = t.mean(0)
    return round(m.norm().item() / (t - m).pow(2).sum(-1).mean().sqrt().item(), 3)


@torch.no_grad()
def stats(p):
    mc, dp, out = cfg.model, p["discriminator"], {}
    emb = M.embed(M.discriminator_embeddings(p), held, None, mc, None)
    bias = M.attention_bias(mask, held)
    x = Lyr.dense(dp["embed_proj"], emb) if "embed_proj" in dp else emb
    out["emb"] = common_mode(x)
    for i, layer in enumerate(dp["layers"]):
        x = Lyr.attention(layer["attention"], x, bias, num_heads=mc.discriminator.num_heads,
                          eps=mc.layer_norm_eps, attn_drop=0.0, hidden_drop=0.0, key=None)
        f, f0 = layer["ffn"], params0["discriminator"]["layers"][i]["ffn"]
        h = F.gelu(Lyr.dense(f["in"], x))
        h_mean = tokens(h).mean(0)
        out[f"L{i}.attention"] = common_mode(x)
        out[f"L{i}.ffn_pre_ln"] = common_mode(Lyr.dense(f["out"], h) + x)
        out[f"L{i}.|W2 h̄|"] = round((f["out"]["weight"] @ h_mean).norm().item(), 3)
        out[f"L{i}.|dW2 h̄|"] = round(((f["out"]["weight"] - f0["out"]["weight"]) @ h_mean)
                                     .norm().item(), 3)
        out[f"L{i}.|b2|"] = round(f["out"]["bias"].norm().item(), 3)
        x = Lyr.feed_forward(f, x, eps=mc.layer_norm_eps, hidden_drop=0.0, key=None)
    out["final"] = common_mode(x)
    out["b_out"] = round(dp["head"]["out"]["bias"].item(), 3)
    e = evaluate(p, {"input_ids": held, "attention_mask": mask}, pretrain.step_key(77, 0))
    out.update(auc=round(float(e["disc_auc"]), 3), uniform_auc=round(float(e["uniform/disc_auc"]), 3),
               gen_acc=round(float(e["gen_accuracy"]), 3))
    return out


print(0, stats(params), flush=True)
for s in range(steps):
    ids = synthetic.corpus(task, 32, 32, 64, seed=s)
    params, opt, m = step(params, opt, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                          pretrain.step_key(0, s))
    if s + 1 in marks:
        print(s + 1, stats(params), "disc_loss", round(float(m["disc_loss"]), 3), flush=True)
