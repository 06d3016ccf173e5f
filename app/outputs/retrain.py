"""The retrain trigger CloudEvent (``io.driftwarden.retrain.requested``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.outputs.cloudevents import envelope, iso
from app.policy.retrain import TriggerDecision

RETRAIN_REQUESTED = "io.driftwarden.retrain.requested"


def retrain_trigger_event(d: TriggerDecision, model: str, version: str | None,
                          last_retrain_ms: int | None, *, source: str) -> dict[str, Any]:
    """Keyed by model; ``trigger_id`` equals the envelope id. The evidence holds each
    motivating alert's kind, subject, window and figures."""

    def evidence(a: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": a.get("kind"), "subject": a.get("feature") or a.get("source"),
                "window": a.get("window"), "figures": a.get("evidence")}

    data = {
        "trigger_id": d.trigger_id, "model": model, "model_version": version,
        "reasons": [{"alert_id": a["alert_id"], "kind": a.get("kind"),
                     "summary": a.get("summary", "")} for a in d.reasons],
        "evidence": {"alerts": {a["alert_id"]: evidence(a) for a in d.reasons}},
        "policy": {"cooldown_until": None if d.cooldown_until_ms is None
                   else iso(d.cooldown_until_ms),
                   "last_retrain": None if last_retrain_ms is None else iso(last_retrain_ms)},
    }
    return envelope(type_=RETRAIN_REQUESTED, id_=d.trigger_id, source=source, subject=model,
                    time_ms=d.at_ms, data=data)
