"""Self-supervised pretraining: time-step masking, OHLC-safe augmentation, masked autoencoder.

    mae = pretrain_model(n_features=4)                       # BiLSTM 2x128 + mask token + head
    obj = MaskedReconstructionObjective(MaskConfig(strategy="block"),
                                        Augmenter(AugmentConfig()), Normalize(mean, std))
    Trainer(mae, obj, cfg).fit(ViewsData(TensorData({"x": raw_windows}), k=2),
                               TensorData({"x": raw_val_windows}))
    model.load_state_dict(mae.encoder_state_dict(), strict=False)   # transfer by name
"""

from moola.pretraining.augment import (
    AugmentConfig,
    Augmenter,
    ViewsData,
    jitter,
    magnitude_warp,
    ohlc_valid,
    repair_ohlc,
    scale,
    smooth_curve,
    time_warp,
)
from moola.pretraining.masking import (
    MaskConfig,
    MaskToken,
    expected_fraction,
    hash_uniform,
    make_mask,
    masked_count,
    sample_keys,
)
from moola.pretraining.objective import (
    MaskedAutoencoder,
    MaskedReconstructionObjective,
    Normalize,
    pretrain_model,
)

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "MaskConfig",
    "MaskToken",
    "MaskedAutoencoder",
    "MaskedReconstructionObjective",
    "Normalize",
    "ViewsData",
    "expected_fraction",
    "hash_uniform",
    "jitter",
    "magnitude_warp",
    "make_mask",
    "masked_count",
    "ohlc_valid",
    "pretrain_model",
    "repair_ohlc",
    "sample_keys",
    "scale",
    "smooth_curve",
    "time_warp",
]
