"""Import from and export to the Hugging Face ``transformers`` ELECTRA layout.

``transformers`` is never imported here: we read and write its files (``config.json`` and
``model.safetensors`` / ``pytorch_model.bin``) directly, so the library stays light.
``save_hf`` writes ``<dir>/discriminator`` (``ElectraForPreTraining``) and ``<dir>/generator``
(``ElectraForMaskedLM``), with the tokenizer files ``AutoTokenizer`` reads when given the
tokenizer directory; ``save_hf_classifier`` writes a fine-tuned
``ElectraForSequenceClassification``; ``load_hf`` reads either pre-training layout back,
keeping one shared embedding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import orjson
import torch

from .config import ModelConfig, EncoderConfig
from .model import discriminator_embeddings
from .rundir import remove_stale_temp_dirs, temp_dir

Params = dict
DISCRIMINATOR, GENERATOR = "discriminator", "generator"
_ARCH = {DISCRIMINATOR: "ElectraForPreTraining", GENERATOR: "ElectraForMaskedLM"}


class CheckpointError(ValueError):
    """A checkpoint that does not match what is asked of it (names the tensor or field)."""


# -- state-dict conversion ----------------------------------------------------------------
def _encoder_to_hf(enc: Params, prefix: str) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    if "embed_proj" in enc:
        sd[f"{prefix}embeddings_project.weight"] = enc["embed_proj"]["weight"]
        sd[f"{prefix}embeddings_project.bias"] = enc["embed_proj"]["bias"]
    for i, layer in enumerate(enc["layers"]):
        lp = f"{prefix}encoder.layer.{i}."
        att, ffn = layer["attention"], layer["ffn"]
        for name, w, b in zip(("query", "key", "value"), att["qkv"]["weight"].chunk(3),
                              att["qkv"]["bias"].chunk(3)):
            sd[f"{lp}attention.self.{name}.weight"] = w
            sd[f"{lp}attention.self.{name}.bias"] = b
        pairs = {"attention.output.dense": att["out"], "attention.output.LayerNorm":
                 att["layer_norm"], "intermediate.dense": ffn["in"], "output.dense": ffn["out"],
                 "output.LayerNorm": ffn["layer_norm"]}
        for hf_name, p in pairs.items():
            sd[f"{lp}{hf_name}.weight"] = p["weight"]
            sd[f"{lp}{hf_name}.bias"] = p["bias"]
    return sd


def _embeddings_to_hf(emb: Params) -> dict[str, torch.Tensor]:
    return {
        "electra.embeddings.word_embeddings.weight": emb["word"],
        "electra.embeddings.position_embeddings.weight": emb["position"],
        "electra.embeddings.token_type_embeddings.weight": emb["token_type"],
        "electra.embeddings.LayerNorm.weight": emb["layer_norm"]["weight"],
        "electra.embeddings.LayerNorm.bias": emb["layer_norm"]["bias"],
    }


def to_hf_state_dict(params: Params, part: str) -> dict[str, torch.Tensor]:
    """Our tree -> the ``state_dict`` of ``ElectraForPreTraining`` / ``ElectraForMaskedLM``."""
    if part not in (DISCRIMINATOR, GENERATOR):
        raise ValueError(f"part={part!r}: expected 'discriminator' or 'generator'")
    # The discriminator's own word table (a GDES delta merged in); the generator's is shared.
    sd = _embeddings_to_hf(discriminator_embeddings(params) if part == DISCRIMINATOR
                           else params["embeddings"])
    net = params[part]
    sd.update(_encoder_to_hf(net, "electra."))
    head = net["head"]
    if part == DISCRIMINATOR:
        for ours, theirs in (("dense", "dense"), ("out", "dense_prediction")):
            sd[f"discriminator_predictions.{theirs}.weight"] = head[ours]["weight"]
            sd[f"discriminator_predictions.{theirs}.bias"] = head[ours]["bias"]
    elif part == GENERATOR:
        for ours, theirs in (("dense", "dense"), ("layer_norm", "LayerNorm")):
            sd[f"generator_predictions.{theirs}.weight"] = head[ours]["weight"]
            sd[f"generator_predictions.{theirs}.bias"] = head[ours]["bias"]
        sd["generator_lm_head.weight"] = params["embeddings"]["word"]  # tied
        sd["generator_lm_head.bias"] = head["output_bias"]
    else:
        raise ValueError(f"part={part!r}: expected 'discriminator' or 'generator'")
    return sd


def _take(sd: dict, name: str, shape: tuple, source: str) -> torch.Tensor:
    if name not in sd:
        raise CheckpointError(f"{source}: missing tensor {name!r}")
    t = sd[name]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, "
                              f"expected {tuple(shape)} from the config")
    return t.detach().to(torch.float32).clone()


def _encoder_from_hf(sd: dict, enc: EncoderConfig, source: str) -> Params:
    H, I = enc.hidden_size, enc.intermediate_size
    p: Params = {}
    if enc.has_projection:
        p["embed_proj"] = {"weight": _take(sd, "embeddings_project.weight",
                                           (H, enc.embedding_size), source),
                           "bias": _take(sd, "embeddings_project.bias", (H,), source)}
    p["layers"] = []
    for i in range(enc.num_layers):
        lp = f"encoder.layer.{i}."
        qkv_w = [_take(sd, f"{lp}attention.self.{n}.weight", (H, H), source)
                 for n in ("query", "key", "value")]
        qkv_b = [_take(sd, f"{lp}attention.self.{n}.bias", (H,), source)
                 for n in ("query", "key", "value")]

        def lin(name, d_out, d_in):
            return {"weight": _take(sd, f"{lp}{name}.weight", (d_out, d_in), source),
                    "bias": _take(sd, f"{lp}{name}.bias", (d_out,), source)}

        def ln(name):
            return {"weight": _take(sd, f"{lp}{name}.weight", (H,), source),
                    "bias": _take(sd, f"{lp}{name}.bias", (H,), source)}

        p["layers"].append({
            "attention": {"qkv": {"weight": torch.cat(qkv_w), "bias": torch.cat(qkv_b)},
                          "out": lin("attention.output.dense", H, H),
                          "layer_norm": ln("attention.output.LayerNorm")},
            "ffn": {"in": lin("intermediate.dense", I, H), "out": lin("output.dense", H, I),
                    "layer_norm": ln("output.LayerNorm")},
        })
    if f"encoder.layer.{enc.num_layers}.attention.self.query.weight" in sd:
        raise CheckpointError(f"{source}: has more encoder layers than num_hidden_layers="
                              f"{enc.num_layers}")
    return p


def _strip_prefix(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        out[k[len("electra."):] if k.startswith("electra.") else k] = v
    return out


def from_hf_state_dict(sd: dict, cfg: ModelConfig, part: str, source: str = "state_dict"
                       ) -> Params:
    """HF ``state_dict`` -> ``{"embeddings": ..., part: ...}`` (heads included when present)."""
    sd = _strip_prefix(sd)
    E, V = cfg.embedding_size, cfg.vocab_size
    emb = {
        "word": _take(sd, "embeddings.word_embeddings.weight", (V, E), source),
        "position": _take(sd, "embeddings.position_embeddings.weight",
                          (cfg.max_position_embeddings, E), source),
        "token_type": _take(sd, "embeddings.token_type_embeddings.weight",
                            (cfg.type_vocab_size, E), source),
        "layer_norm": {"weight": _take(sd, "embeddings.LayerNorm.weight", (E,), source),
                       "bias": _take(sd, "embeddings.LayerNorm.bias", (E,), source)},
    }
    enc_cfg = cfg.discriminator if part == DISCRIMINATOR else cfg.generator
    net = _encoder_from_hf(sd, enc_cfg, source)
    H = enc_cfg.hidden_size
    if part == DISCRIMINATOR:
        if "discriminator_predictions.dense.weight" in sd:
            net["head"] = {
                "dense": {"weight": _take(sd, "discriminator_predictions.dense.weight", (H, H),
                                          source),
                          "bias": _take(sd, "discriminator_predictions.dense.bias", (H,), source)},
                "out": {"weight": _take(sd, "discriminator_predictions.dense_prediction.weight",
                                        (1, H), source),
                        "bias": _take(sd, "discriminator_predictions.dense_prediction.bias", (1,),
                                      source)},
            }
    else:
        net["head"] = {
            "dense": {"weight": _take(sd, "generator_predictions.dense.weight", (E, H), source),
                      "bias": _take(sd, "generator_predictions.dense.bias", (E,), source)},
            "layer_norm": {"weight": _take(sd, "generator_predictions.LayerNorm.weight", (E,),
                                           source),
                           "bias": _take(sd, "generator_predictions.LayerNorm.bias", (E,),
                                         source)},
            "output_bias": _take(sd, "generator_lm_head.bias", (V,), source),
        }
        if "generator_lm_head.weight" in sd and not torch.equal(
                sd["generator_lm_head.weight"].float(), emb["word"]):
            raise CheckpointError(f"{source}: generator_lm_head.weight is not tied to the word "
                                  "embeddings; ELECTRA's generator head must share them")
    return {"embeddings": emb, part: net}


# -- config.json --------------------------------------------------------------------------
def _hf_config(cfg: ModelConfig, part: str) -> dict:
    enc = cfg.discriminator if part == DISCRIMINATOR else cfg.generator
    return {
        "architectures": [_ARCH[part]],
        "model_type": "electra",
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "hidden_size": enc.hidden_size,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": enc.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "summary_type": "first",
        "summary_use_proj": True,
        "summary_activation": "gelu",
        "summary_last_dropout": 0.1,
        "tie_word_embeddings": True,
        "electra_fn": {"generator_multiplier": cfg.generator_multiplier, "name": cfg.name},
    }


_HF_FIELDS = {"vocab_size": "vocab_size", "embedding_size": "embedding_size",
              "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
              "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
              "max_position_embeddings": "max_position_embeddings",
              "type_vocab_size": "type_vocab_size", "hidden_dropout_prob": "hidden_dropout",
              "attention_probs_dropout_prob": "attention_dropout",
              "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range",
              "pad_token_id": "pad_token_id"}


def _read_json(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (expected a Hugging Face config.json)")
    except orjson.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _config_from_hf(hf: dict, source: Path) -> dict:
    if hf.get("model_type", "electra") != "electra":
        raise CheckpointError(f"{source}: model_type={hf.get('model_type')!r}, expected "
                              "'electra'")
    if hf.get("hidden_act", "gelu") not in ("gelu", "gelu_python"):
        raise CheckpointError(f"{source}: hidden_act={hf['hidden_act']!r}; only exact GELU "
                              "is supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type="
                              f"{hf['position_embedding_type']!r}; only 'absolute' is supported")
    out = {}
    for theirs, ours in _HF_FIELDS.items():
        if theirs in hf and hf[theirs] is not None:
            out[ours] = hf[theirs]
    if "embedding_size" not in out and "hidden_size" in out:
        out["embedding_size"] = out["hidden_size"]
    if out.get("pad_token_id") is None:
        out.pop("pad_token_id", None)
    return out


# -- files --------------------------------------------------------------------------------
def _read_state_dict(directory: Path) -> tuple[dict, str]:
    st, idx, binf = (directory / "model.safetensors", directory / "model.safetensors.index.json",
                     directory / "pytorch_model.bin")
    if st.exists() or idx.exists():
        from safetensors.torch import load_file
        if st.exists():
            return load_file(str(st)), str(st)
        sd = {}
        for shard in sorted(set(_read_json(idx)["weight_map"].values())):
            sd.update(load_file(str(directory / shard)))
        return sd, str(idx)
    if binf.exists():
        return torch.load(str(binf), map_location="cpu", weights_only=True), str(binf)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin found")


def _detect_part(hf: dict, sd: dict) -> str:
    arch = " ".join(hf.get("architectures") or [])
    if "MaskedLM" in arch or any(k.startswith("generator_") for k in sd):
        return GENERATOR
    return DISCRIMINATOR


def load_hf(path: str | os.PathLike, generator: str | os.PathLike | None = None,
            config: ModelConfig | None = None) -> tuple[Params, ModelConfig]:
    """Read Hugging Face ELECTRA weights into ``(params, config)``.

    ``path`` is either a directory written by ``save_hf`` (with ``discriminator/`` and
    ``generator/`` inside) or a single ``ElectraForPreTraining`` / ``ElectraModel`` directory;
    ``generator`` optionally names an ``ElectraForMaskedLM`` directory to load with it. The two
    networks share one embedding table. If ``config`` is given, every size must match it.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    if (root / DISCRIMINATOR).is_dir() and not (root / "config.json").exists():
        disc_dir = root / DISCRIMINATOR
        if generator is None and (root / GENERATOR).is_dir():
            generator = root / GENERATOR
    else:
        disc_dir = root
    hf_d = _read_json(disc_dir / "config.json")
    sd_d, src_d = _read_state_dict(disc_dir)
    if _detect_part(hf_d, sd_d) == GENERATOR:
        raise CheckpointError(f"{disc_dir}: holds a generator (ElectraForMaskedLM); pass the "
                              "discriminator directory as `path` and this one as `generator=`")
    fields = _config_from_hf(hf_d, disc_dir / "config.json")
    extra = hf_d.get("electra_fn", {})
    fields["name"] = extra.get("name", "hf")
    hf_g = sd_g = None
    if generator is not None:
        gdir = Path(generator)
        hf_g = _read_json(gdir / "config.json")
        sd_g, src_g = _read_state_dict(gdir)
        g_fields = _config_from_hf(hf_g, gdir / "config.json")
        for f in ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size"):
            if g_fields.get(f) != fields.get(f):
                raise CheckpointError(f"{gdir / 'config.json'}: {f}={g_fields.get(f)} differs "
                                      f"from the discriminator's {fields.get(f)}")
        if g_fields["num_layers"] != fields["num_layers"]:
            raise CheckpointError(f"{gdir / 'config.json'}: num_hidden_layers="
                                  f"{g_fields['num_layers']} differs from the discriminator's "
                                  f"{fields['num_layers']} (ELECTRA keeps the depth)")
        # The exported multiplier first: rounding makes the size ratio differ from it (hidden
        # 18 at 1/4 gives 4, and 4/18 predicts FFN 9 where 1/4 gave 10).
        got = (g_fields["hidden_size"], g_fields["num_heads"], g_fields["intermediate_size"])
        candidates = [m for m in (extra.get("generator_multiplier"),
                                  hf_g.get("electra_fn", {}).get("generator_multiplier"))
                      if m is not None] + [g_fields["hidden_size"] / fields["hidden_size"]]
        fields["generator_multiplier"] = candidates[-1]
        for m in candidates:
            try:
                g = ModelConfig(**(fields | {"generator_multiplier": m})).generator
            except ValueError:
                continue
            if (g.hidden_size, g.num_heads, g.intermediate_size) == got:
                fields["generator_multiplier"] = m
                break
    elif "generator_multiplier" in extra:
        fields["generator_multiplier"] = extra["generator_multiplier"]
    try:
        cfg = ModelConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{disc_dir / 'config.json'}: {e}") from None
    if hf_g is not None:
        g = cfg.generator
        got = (hf_g["hidden_size"], hf_g["num_attention_heads"], hf_g["intermediate_size"])
        if got != (g.hidden_size, g.num_heads, g.intermediate_size):
            raise CheckpointError(
                f"{Path(generator) / 'config.json'}: generator (hidden, heads, ffn)={got} is not "
                f"a uniform {cfg.generator_multiplier:.4g} scaling of the discriminator")
    if config is not None:
        for f in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(config, f) != getattr(cfg, f):
                raise CheckpointError(f"{disc_dir}: {f}={getattr(cfg, f)} in the checkpoint but "
                                      f"{getattr(config, f)} expected")
    params = from_hf_state_dict(sd_d, cfg, DISCRIMINATOR, src_d)
    if sd_g is not None:
        gparams = from_hf_state_dict(sd_g, cfg, GENERATOR, src_g)
        params[GENERATOR] = gparams[GENERATOR]
        for name, a in params["embeddings"].items():
            b = gparams["embeddings"][name]
            diff = max((x - y).abs().max().item() for x, y in
                       zip(_leaves(a), _leaves(b)))
            if diff > 1e-6:
                warnings.warn(f"generator embeddings.{name} differ from the discriminator's "
                              f"(max abs {diff:.3g}); using the discriminator's (shared)")
    return params, cfg


def _leaves(x):
    return list(x.values()) if isinstance(x, dict) else [x]


def _export_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"save_hf: extra file name {name!r} is not a plain file name")
    return name


def _extra_files(extra_files: dict[str, bytes] | None) -> dict[str, bytes]:
    """``extra_files`` to write; our legacy ``tokenizer.json`` (which transformers would misread
    as its own) under its current name ``electra_fn_tokenizer.json``."""
    out = {}
    for name, data in (extra_files or {}).items():
        name = _export_name(name)
        if name == "tokenizer.json":
            from .data.tokenizer import SP_CONFIG_FILE, is_own_config
            if is_own_config(data):
                name = SP_CONFIG_FILE
        out[name] = bytes(data)
    return out


def tokenizer_files(tokenizer_dir: str | os.PathLike, cfg: ModelConfig) -> dict[str, bytes]:
    """The files an export holds for the tokenizer in ``tokenizer_dir``: ours (so that
    ``load_tokenizer`` reads the export) and those ``transformers.AutoTokenizer`` loads.

    Without the optional ``tokenizers`` package the second set cannot be built for a
    sentencepiece tokenizer: a warning says so and only ours are returned. Raises ValueError
    when the tokenizer's vocabulary differs from ``cfg.vocab_size``.
    """
    from .data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(f"save_hf: the tokenizer in {tokenizer_dir} has {tok.vocab_size} "
                         f"tokens but the model's vocab_size is {cfg.vocab_size}")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    try:
        files.update(tok.transformers_files(model_max_length=cfg.max_position_embeddings))
    except ImportError as e:
        warnings.warn(f"{e}. The export holds only electra_fn's own tokenizer files, which "
                      "transformers' AutoTokenizer cannot read; install 'tokenizers' and export "
                      "again to get them.", stacklevel=3)
    return files


def _write_dir(parent: Path, name: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``parent/name`` via a temporary sibling renamed into place, so a
    crash never leaves a half-written directory; an existing one is replaced."""
    for stale in remove_stale_temp_dirs(parent):
        warnings.warn(f"removed {stale}, left by an interrupted export", stacklevel=3)
    tmp = temp_dir(parent, name)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an export is ordinary shared data
        for file_name, data in files.items():
            (tmp / file_name).write_bytes(data)
        final = parent / name
        if final.exists():
            old = parent / f".{name}-old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return parent / name


def _safetensors_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}
    return save(sd, metadata={"format": "pt"})


def _check_exportable(cfg: ModelConfig, what: str) -> None:
    if cfg.disc_context != "full":
        raise ValueError(f"{what}: disc_context={cfg.disc_context!r} has no transformers "
                         "equivalent (only 'full' can be exported)")


def save_hf(params: Params, cfg: ModelConfig, out_dir: str | os.PathLike,
            tokenizer_dir: str | os.PathLike | None = None, *,
            parts: tuple[str, ...] | None = None, extra_files: dict[str, bytes] | None = None
            ) -> dict[str, Path]:
    """Write ``out_dir/discriminator`` and ``out_dir/generator`` for ``from_pretrained``.

    With ``tokenizer_dir`` (a directory ``load_tokenizer`` reads) each directory also holds
    that tokenizer twice over: our files, and the files with which ``AutoTokenizer`` and
    ``pipeline("fill-mask", model=out_dir/"generator")`` load it and give the same ids
    (:func:`tokenizer_files`). ``extra_files`` (name -> bytes) are copied in as well, before
    the tokenizer's files (which win on a shared name). Each directory is written to a
    temporary sibling and renamed into place, so a crash never leaves a half-written export.
    """
    _check_exportable(cfg, "save_hf")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = parts or tuple(p for p in (DISCRIMINATOR, GENERATOR) if p in params)
    shared = _extra_files(extra_files)
    if tokenizer_dir is not None:
        shared.update(tokenizer_files(tokenizer_dir, cfg))
    written = {}
    for part in parts:
        if part not in params:
            raise ValueError(f"save_hf: params have no {part!r} network")
        sd = to_hf_state_dict(params, part)
        if part == GENERATOR:
            sd.pop("generator_lm_head.weight")  # tied: transformers restores it on load
        files = {**shared, "model.safetensors": _safetensors_bytes(sd),
                 "config.json": orjson.dumps(_hf_config(cfg, part), option=orjson.OPT_INDENT_2)}
        written[part] = _write_dir(out, part, files)
    return written


# -- fine-tuned classifiers -----------------------------------------------------------------
def to_hf_classifier_state_dict(ft_params: Params) -> dict[str, torch.Tensor]:
    """Our fine-tuning tree -> the ``state_dict`` of ``ElectraForSequenceClassification``.

    Our head (the original ELECTRA's) is dropout + one linear layer ``y = W h + b`` on the
    [CLS] state. transformers' ``ElectraClassificationHead`` is dropout, ``dense`` (H -> H),
    GELU, dropout, ``out_proj`` (H -> C). Since ``gelu(y) - gelu(-y) = y`` for every ``y``, the
    head is written as ``dense = [W; -W; 0]`` with bias ``[b; -b; 0]`` and ``out_proj = [I, -I,
    0]`` with bias 0: in eval mode it computes our logits exactly (up to float32 rounding).
    It needs ``hidden_size >= 2 * num_labels``. Training this head further in transformers
    trains that reparametrisation, with a second dropout after the GELU, not our head.
    """
    classifier = ft_params["classifier"]
    W, b = classifier["weight"].detach(), classifier["bias"].detach()
    C, H = W.shape
    if 2 * C > H:
        raise ValueError(f"hidden_size={H} is below 2 * num_labels={2 * C}: the classifier "
                         "cannot be written as transformers' ElectraClassificationHead")
    sd = _embeddings_to_hf(ft_params["embeddings"])
    sd.update(_encoder_to_hf(ft_params["encoder"], "electra."))
    dense_w = W.new_zeros(H, H)
    dense_b = b.new_zeros(H)
    dense_w[:C], dense_w[C:2 * C] = W, -W
    dense_b[:C], dense_b[C:2 * C] = b, -b
    eye = torch.eye(C, dtype=W.dtype, device=W.device)
    out_w = W.new_zeros(C, H)
    out_w[:, :C], out_w[:, C:2 * C] = eye, -eye
    sd.update({"classifier.dense.weight": dense_w, "classifier.dense.bias": dense_b,
               "classifier.out_proj.weight": out_w, "classifier.out_proj.bias": b.new_zeros(C)})
    return sd


def save_hf_classifier(ft_params: Params, cfg: ModelConfig, num_labels: int,
                       out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                       *, id2label: dict[int, str] | list[str] | None = None,
                       extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a fine-tuned model (:func:`electra_fn.finetune.init_finetune`'s tree) to
    ``out_dir`` for ``ElectraForSequenceClassification`` / ``AutoModelForSequenceClassification``
    ``.from_pretrained``, with the same logits in eval mode.

    ``num_labels == 1`` is regression (STS-B: ``problem_type="regression"``, the score is
    ``logits[:, 0]``), otherwise single-label classification. The head is rewritten for
    transformers' (dense + GELU + dense) as :func:`to_hf_classifier_state_dict` explains.
    ``tokenizer_dir`` and ``extra_files`` as in :func:`save_hf`; written atomically.
    """
    _check_exportable(cfg, "save_hf_classifier")
    if num_labels < 1:
        raise ValueError(f"save_hf_classifier: num_labels={num_labels} must be >= 1")
    got = tuple(ft_params["classifier"]["weight"].shape)
    if got != (num_labels, cfg.hidden_size):
        raise ValueError(f"save_hf_classifier: classifier weight has shape {got}, expected "
                         f"({num_labels}, {cfg.hidden_size}) for num_labels={num_labels}")
    if id2label is None:
        id2label = [f"LABEL_{i}" for i in range(num_labels)]
    labels = dict(id2label) if isinstance(id2label, dict) else dict(enumerate(id2label))
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"save_hf_classifier: id2label needs ids 0..{num_labels - 1}, got "
                         f"{sorted(labels)}")
    config = _hf_config(cfg, DISCRIMINATOR) | {
        "architectures": ["ElectraForSequenceClassification"],
        "id2label": {str(i): str(labels[i]) for i in range(num_labels)},
        "label2id": {str(labels[i]): i for i in range(num_labels)},
        "problem_type": "regression" if num_labels == 1 else "single_label_classification",
        "classifier_dropout": cfg.hidden_dropout,
        "tie_word_embeddings": False,
    }
    files = _extra_files(extra_files)
    if tokenizer_dir is not None:
        files.update(tokenizer_files(tokenizer_dir, cfg))
    files["model.safetensors"] = _safetensors_bytes(to_hf_classifier_state_dict(ft_params))
    files["config.json"] = orjson.dumps(config, option=orjson.OPT_INDENT_2)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_dir(out.parent, out.name, files)
