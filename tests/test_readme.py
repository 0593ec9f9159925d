"""The README's library example runs as written (with the tiny preset, for speed)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace('from_name("small")', 'from_name("tiny")')
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    cfg, params2 = scope["cfg"], scope["params2"]
    assert scope["rtd_logits"].shape == (2, 128)
    assert scope["mlm_logits"].shape == (2, 2, cfg.vocab_size)
    assert torch.isfinite(scope["metrics"]["loss"])
    assert scope["cfg2"] == cfg
    assert torch.equal(params2["embeddings"]["word"], scope["params"]["embeddings"]["word"])
    assert (tmp_path / "export" / "discriminator" / "config.json").is_file()
