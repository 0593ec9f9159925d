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


ROOT = README.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(md: Path) -> list[str]:
    return [t for t in LINK.findall(md.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", t)]


def test_readme_is_a_front_page_whose_links_resolve():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 220
    for md in [README, *sorted((ROOT / "records").glob("**/README.md"))]:
        for target in _relative_links(md):
            assert (md.parent / target).exists(), f"{md.relative_to(ROOT)}: broken link {target}"


def test_records_index_lists_every_record_and_each_has_a_readme():
    index = ROOT / "records" / "README.md"
    linked = {t.strip("/").split("/")[0] for t in _relative_links(index)}
    for folder in sorted(p for p in (ROOT / "records").iterdir() if p.is_dir()):
        assert folder.name in linked, f"records/README.md does not list {folder.name}"
        assert (folder / "README.md").is_file(), f"{folder.name} has no README.md"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_[a-z0-9-]+", folder.name), folder.name
