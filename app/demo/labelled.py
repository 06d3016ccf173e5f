"""Seeded prediction and outcome streams of a binary classifier with a known accuracy.

Used by the tests, the demo and the load tests: each window's predictions are right with
the probability ``accuracy(window)``; every label arrives ``delay_ms`` (± ``jitter_ms``)
after its prediction, so outcomes reach the monitor in a different order than their
predictions. Scores agree with the predicted class (above 0.5 for class "1").

>>> preds, outs = labelled_stream(seed=1, windows=2, per_window=3, window_ms=60_000,
...                               t0=0, accuracy=lambda w: 1.0, delay_ms=1000)
>>> [(p["prediction"], o["label"]) for p, o in zip(preds, outs)][:3]
[(0, 0), (0, 0), (1, 1)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def labelled_stream(*, seed: int, windows: int, per_window: int, window_ms: int, t0: int,
                    accuracy: Callable[[int], float], delay_ms: int, jitter_ms: int = 0,
                    model: str = "churn", version: str = "v1", positive_rate: float = 0.3,
                    id_prefix: str = "p") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(predictions in event-time order, outcomes in their arrival order)."""
    rng = np.random.default_rng(seed)
    preds: list[dict[str, Any]] = []
    outs: list[tuple[int, dict[str, Any]]] = []
    step = window_ms // per_window
    for w in range(windows):
        label = (rng.random(per_window) < positive_rate).astype(int)
        right = rng.random(per_window) < accuracy(w)
        predicted = np.where(right, label, 1 - label)
        confidence = rng.uniform(0.5, 1.0, per_window)
        score = np.where(predicted == 1, confidence, 1 - confidence)
        tenure = rng.gamma(2.0, 12.0, per_window)
        delays = delay_ms + (rng.integers(-jitter_ms, jitter_ms + 1, per_window)
                             if jitter_ms else np.zeros(per_window, dtype=np.int64))
        for i in range(per_window):
            t = t0 + w * window_ms + i * step
            pid = f"{id_prefix}-{w}-{i}"
            preds.append({"prediction_id": pid, "model": model, "model_version": version,
                          "timestamp": t, "features": {"tenure": round(float(tenure[i]), 3)},
                          "prediction": int(predicted[i]),
                          "scores": {"1": round(float(score[i]), 4)}})
            label_t = t + int(delays[i])
            outs.append((label_t, {"prediction_id": pid, "model": model,
                                   "label": int(label[i]), "timestamp": label_t}))
    outs.sort(key=lambda x: x[0])
    return preds, [o for _, o in outs]
