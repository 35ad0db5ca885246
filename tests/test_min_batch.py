"""``MIN_BATCH`` is enough: a window padded to ``MIN_BATCH`` rows gives the same bits as the same
window inside a large batch, for every kind of encoder the presets build, on this machine's CPU
kernels. Predict, the scored metrics and the runtime's full-window members rely on it for
bit-identical probabilities whatever else shares their batch; a CPU whose kernels switch at
another size fails here, loudly, instead of drifting in the last bits.
"""

from __future__ import annotations

import pytest
import torch

from moola.inference import MIN_BATCH
from moola.models import build_model, direction_bilstm, direction_lstm, direction_transformer, jade_compact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("preset", [direction_lstm, direction_bilstm, direction_transformer, jade_compact])
def test_padded_to_min_batch_equals_a_large_batch_bit_for_bit(preset) -> None:
    torch.manual_seed(0)
    model = build_model(preset(n_features=39)).eval()
    x = torch.randn(64, 60, 39)  # (B, T, F)
    with torch.no_grad():
        big = model({"x": x})
        for i in range(0, 64, 7):
            padded = model({"x": x[i:i + 1].expand(MIN_BATCH, -1, -1).contiguous()})
            for head, out in big.items():
                if isinstance(out, torch.Tensor):
                    assert torch.equal(padded[head][0], out[i]), (preset.__name__, head, i)
