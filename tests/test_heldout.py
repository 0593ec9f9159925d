"""Held-out evaluation of pre-training: token weighting, fixed batches, reports."""

import numpy as np
import pytest
import torch

from electra_fn import heldout
from electra_fn.heldout import evaluate


def test_evaluate_weights_each_metric_by_its_own_tokens():
    """Held-out metrics are token-weighted over batches: generator ones by masked tokens,
    replaced-token ones by that batch's replaced tokens (the generator's, or a fixed
    proposal's own), original-token ones by the rest."""
    rows = [
        {"gen_loss": 1.0, "gen_accuracy": 0.0, "disc_loss": 0.2, "disc_accuracy": 0.9,
         "disc_replaced_accuracy": 1.0, "disc_original_accuracy": 0.5, "disc_auc": 0.6,
         "replaced_fraction": 0.1, "masked_tokens": 10.0, "tokens": 100.0,
         "u/disc_replaced_accuracy": 0.0, "u/disc_original_accuracy": 1.0,
         "u/replaced_fraction": 0.5, "u/tokens": 100.0, "u/disc_auc": 1.0},
        {"gen_loss": 3.0, "gen_accuracy": 1.0, "disc_loss": 0.4, "disc_accuracy": 0.7,
         "disc_replaced_accuracy": 0.0, "disc_original_accuracy": 1.0, "disc_auc": 0.9,
         "replaced_fraction": 0.3, "masked_tokens": 30.0, "tokens": 300.0,
         "u/disc_replaced_accuracy": 1.0, "u/disc_original_accuracy": 0.0,
         "u/replaced_fraction": 0.1, "u/tokens": 300.0, "u/disc_auc": 0.0},
    ]
    it = iter(rows)
    e = evaluate(lambda params, batch, key: {k: torch.tensor(v) for k, v in next(it).items()},
                 None, [{}, {}], seed=0, device=torch.device("cpu"))
    assert e["gen_accuracy"] == pytest.approx(30 / 40)           # masked tokens 10 : 30
    assert e["disc_loss"] == pytest.approx((0.2 * 100 + 0.4 * 300) / 400)
    assert e["disc_replaced_accuracy"] == pytest.approx(10 / (10 + 90))  # replaced 10 : 90
    assert e["disc_original_accuracy"] == pytest.approx((0.5 * 90 + 210) / 300)
    assert e["u/disc_replaced_accuracy"] == pytest.approx(30 / 80)  # its own: 50 : 30
    assert e["u/disc_original_accuracy"] == pytest.approx(50 / 320)  # 50 : 270
    assert e["u/disc_auc"] == pytest.approx(50 / 80)
    assert e["loss"] == pytest.approx(e["gen_loss"] + 50 * e["disc_loss"])


def test_valid_batches_are_the_first_rows_with_attention_on_non_padding():
    class Data:
        valid_ids = np.array([[5, 6, 0], [7, 0, 0], [8, 9, 10]], dtype=np.int32)
        valid_token_types = np.zeros((3, 3), dtype=np.int8)
    b = heldout.make_valid_batches(Data(), batch_size=2, n_batches=8)
    assert [x["input_ids"].shape[0] for x in b] == [2, 1]
    assert b[0]["attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert len(heldout.make_valid_batches(Data(), batch_size=1, n_batches=2)) == 2


def test_final_table_leaves_out_metrics_one_side_lacks():
    lines = heldout.final_table({"step": 0, "disc_auc": 0.5, "gen_loss": 7.0},
                                {"step": 9, "disc_auc": 0.75})
    assert lines[0].split()[-2:] == ["step", "9"] or "step 9" in lines[0]
    assert any("discriminator ROC AUC" in x and "0.7500" in x for x in lines)
    assert not any("generator loss" in x for x in lines)
