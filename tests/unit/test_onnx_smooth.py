"""SmoothQuant rescaling changes nothing in fp32 (it only moves ranges into the weights)."""

from __future__ import annotations

import os

import numpy as np

from embedstack.inference.batching.tokens import TokenPacker
from embedstack.inference.models.bundled import L6
from embedstack.inference.models.gate import load_sample
from embedstack.inference.models.smooth import input_ranges, load_calibration, smooth

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_smoothing_is_exact_in_fp32_and_flattens_activation_ranges() -> None:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(L6.folder()), attn_implementation="eager").eval()
    packer = TokenPacker(str(L6.tokenizer_json()), 256)
    texts = load_calibration(12)
    assert len(texts) == 12
    ranges = input_ranges(model, packer, texts)
    assert len(ranges) == 36  # 6 layers x (q, k, v, attention out, FFN in, FFN out)
    packed = packer.encode(["Smoothing moves outliers into weights.", texts[0]])
    ids, mask = (torch.from_numpy(a) for a in packed.pad(np.arange(2), 0))
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)[0]
        assert smooth(model, ranges) == 36
        after = model(input_ids=ids, attention_mask=mask)[0]
        spread_before = max(float(r.max() / r.median()) for r in ranges.values())
        spread_after = max(
            float(r.max() / r.median()) for r in input_ranges(model, packer, texts).values()
        )
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-4)
    assert spread_after < spread_before  # per-channel ranges are flatter: kinder to int8


def test_calibration_text_is_not_the_gate_sample() -> None:
    calibration = set(load_calibration())
    sample = load_sample()
    assert len(calibration) == 200
    assert not calibration & set(sample.passages) and not calibration & set(sample.queries)
