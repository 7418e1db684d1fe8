"""The Hugging Face task adapter in half precision: its additive attention mask takes the model's dtype and that
dtype's minimum, so padding is masked as in float32 (float32's minimum would overflow a bf16/fp16 model's scores)."""

import pytest
import torch

from datablame.influence.models import load_classifier
from datablame.influence.task import HFSequenceClassificationTask

TEXTS = ["goal", "pasta soup bread spicy sweet dinner recipe"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_mask_uses_the_dtype_minimum_and_masks_padding(tiny_bert, dtype):
    model, task = load_classifier(tiny_bert, ["a", "b", "c"])
    assert task.encode(TEXTS)["attention_mask"].dtype == torch.float32
    half = model.to(dtype)
    task = HFSequenceClassificationTask(task.tokenizer, half)
    batch = task.encode(TEXTS)
    mask = batch["attention_mask"]
    assert mask.dtype == dtype and mask.min() == torch.finfo(dtype).min and torch.isfinite(mask).all()
    with torch.no_grad():
        padded = half(**batch).logits[0]  # "goal", padded to the longer text
        alone = half(**task.encode(TEXTS[:1])).logits[0]
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded.float(), alone.float(), atol=0.05, rtol=0.05)
