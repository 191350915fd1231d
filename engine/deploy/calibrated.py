"""Calibrated predictions: probabilities softmax(logits / T) with the temperature fitted on the run's
validation images, and "unknown" for an image whose score falls below the threshold that keeps 95 %
of them (engine.model.calibration). An exported file's card says T and the threshold; a checkpoint
carries them itself. A model without either gives raw probabilities and no unknown verdict."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.deploy.model_card import read_card
from engine.model.calibration import calibrated_probabilities, known_scores


def deployment_calibration(path: str | os.PathLike, fmt: str) -> dict | None:
    """{"temperature", "unknown": {"score", "threshold", ...}} for a model file, or None."""
    card = read_card(path)
    if card is not None:
        calibration = card.get("calibration") or {}
        if "temperature" not in calibration:
            return None
        return {"temperature": float(calibration["temperature"]), "unknown": card.get("unknown")}
    if fmt == "pt":
        from engine.model.checkpoint import load_checkpoint

        found = load_checkpoint(Path(path)).get("calibration")
        return found if isinstance(found, dict) and "temperature" in found else None
    return None


def classify(logits: torch.Tensor, class_names: list[str], k: int, calibration: dict | None,
             raw: bool = False) -> list[dict]:
    """Per image: {"top_k": [{"class", "index", "probability"}], "calibrated": bool, and with an
    unknown rule "unknown": bool, "score": {"name", "value", "threshold"}}."""
    temperature = 1.0 if raw or not calibration else float(calibration["temperature"])
    probabilities = calibrated_probabilities(logits, temperature)
    values, indices = probabilities.topk(min(k, len(class_names)), dim=1)
    rule = (calibration or {}).get("unknown")
    scores = known_scores(logits, rule["score"], float(calibration["temperature"])) if rule else None
    results = []
    for row, (vs, ix) in enumerate(zip(values, indices)):
        result = {"top_k": [{"class": class_names[int(i)], "index": int(i), "probability": float(v)}
                            for v, i in zip(vs, ix)],
                  "calibrated": bool(calibration) and not raw}
        if rule:
            value = float(scores[row])
            result["unknown"] = value < float(rule["threshold"])
            result["score"] = {"name": rule["score"], "value": value, "threshold": float(rule["threshold"])}
        results.append(result)
    return results
