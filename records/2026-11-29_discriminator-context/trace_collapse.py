"""Per-step trace of the discriminator's collapse on the synthetic probe (record script).

    python records/2026-11-29_discriminator-context/trace_collapse.py chain 600 gen_delay_steps=300
    python records/2026-11-29_discriminator-context/trace_collapse.py chain 900 gen_delay_steps=300 detach=True

Prints, every tenth of the run (and every 20 steps from 300 to 420): the spread of the
discriminator's final states across tokens (h_tok_std), of its head activations (z_std), the
1-unit output's weight norm and bias, the logits' spread, and held-out AUCs. Options beyond
probe_config's: bias0=x (output bias at init), detach=True (the generator's forward sees the
shared embeddings detached: its gradient never reaches them), glorot=True (Glorot-uniform
embeddings_project and output, as the original).
"""
import sys, torch, ast
import torch.nn.functional as F
from electra_fn import diagnostics as D, model as M, pretrain, layers as Lyr
from electra_fn.data import synthetic
torch.set_num_threads(1)
task = sys.argv[1]; steps = int(sys.argv[2])
kw = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
bias0 = kw.pop('bias0', None)
detach = kw.pop('detach', False)
glorot = kw.pop('glorot', False)
if detach:
    _gh, _ghead = M.generator_hidden, M.generator_head
    def sg(params): return {**params, "embeddings": {k: (v.detach() if not isinstance(v, dict) else {kk: vv.detach() for kk, vv in v.items()}) for k, v in params["embeddings"].items()}}
    M.generator_hidden = lambda params, *a, **k: _gh(sg(params), *a, **k)
    M.generator_head = lambda params, *a, **k: _ghead(sg(params), *a, **k)
cfg = D.probe_config(steps=steps, **kw)
params = M.init_params(cfg.model, 0)
if bias0 is not None: params['discriminator']['head']['out']['bias'] = torch.tensor([float(bias0)])
if glorot:
    g = torch.Generator().manual_seed(7)
    for part in ("discriminator", "generator"):
        if "embed_proj" in params[part]:
            w = params[part]["embed_proj"]["weight"]; lim = (6 / sum(w.shape)) ** 0.5
            params[part]["embed_proj"]["weight"] = (torch.rand(w.shape, generator=g) * 2 - 1) * lim
    w = params["discriminator"]["head"]["out"]["weight"]; lim = (6 / sum(w.shape)) ** 0.5
    params["discriminator"]["head"]["out"]["weight"] = (torch.rand(w.shape, generator=g) * 2 - 1) * lim
opt = pretrain.init_opt_state(params, cfg)
step = pretrain.make_train_step(cfg, grad_route="autograd")
held = synthetic.corpus(task, 128, 32, 64, seed=2**40)
mask = torch.ones_like(held)
def stats(p):
    with torch.no_grad():
        h = M.discriminator_hidden(p, held, None, mask, cfg.model)  # B L H
        head = p["discriminator"]["head"]
        z = F.gelu(Lyr.dense(head["dense"], h))
        lg = Lyr.dense(head["out"], z)[..., 0]
        tok_std = h[:, 1:-1].reshape(-1, h.shape[-1]).std(0).mean().item()
        z_std = z[:, 1:-1].reshape(-1, z.shape[-1]).std(0).mean().item()
        return dict(h_tok_std=round(tok_std,4), z_std=round(z_std,4), z_mean_abs=round(z.abs().mean().item(),4),
                    w_out=round(head["out"]["weight"].norm().item(),4), b_out=round(head["out"]["bias"].item(),3),
                    w_dense=round(head["dense"]["weight"].norm().item(),3), logit_std=round(lg[:,1:-1].std().item(),4))
ev = pretrain.make_eval_step(cfg, proposals={'uniform': pretrain.proposal_logits('uniform', cfg.model.vocab_size)})
print(0, stats(params))
for s in range(steps):
    ids = synthetic.corpus(task, 32, 32, 64, seed=s)
    params, opt, m = step(params, opt, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, pretrain.step_key(0, s))
    if (s+1) % (steps//10) == 0 or 300 <= s < 420 and s % 20 == 0:
        e = ev(params, {"input_ids": held, "attention_mask": mask}, pretrain.step_key(77, 0)); print(s+1, stats(params), "auc", round(float(e["disc_auc"]),3), "uni", round(float(e["uniform/disc_auc"]),3), "gacc", round(float(e["gen_accuracy"]),3), "gnorm", round(float(m["grad_norm"]),3), "dloss", round(float(m["disc_loss"]),3), flush=True)
