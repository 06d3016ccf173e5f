"""The hot path of decoding: msgspec decodes and validates a whole message in C.

Each input event type has a msgspec type that, with the checks ``decode_message`` makes
after it (names against their pattern, once per distinct name; string timestamps
against the calendar), accepts a **subset** of what its precompiled checks
(``app.events.checks``) accept: the plain, common shapes (epoch milliseconds as
integers, no NaN, numbers within 64 bits). A message the fast decoder
refuses for any reason goes through the precise path unchanged, element by element, so
rejections, their reasons and their detail are exactly what they were; only valid
messages are faster. Events come out as plain dicts, as from ``orjson``, minus top-level
fields the contract does not define (nothing reads them); one known difference: inside an
input's ``record`` (free-form), an integer beyond 64 bits stays exact here where orjson
reads it as the nearest float. Tests check on generated documents (and fuzz on any bytes,
``tests/unit/fuzz``) that the fast path never accepts what the checks refuse, and
returns the same events when both accept.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec
from msgspec import Meta

from app.events.checks import (
    INPUT,
    MAX_EPOCH_MS,
    MAX_FEATURES,
    MODEL_EVENT,
    OUTCOME,
    PREDICTION,
    RFC3339_PATTERN,
    Spec,
)

# Integers within int64 (larger ones, which orjson reads as u64 or floats, take the
# precise path)
Int = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
# A name's pattern (NAME_PATTERN) is checked after decoding, once per distinct name in a
# message (``app.events.decode``): as a msgspec pattern it ran a regex per event, a fifth
# of the decoding's time for array messages.
Name = str
Ident = Annotated[str, Meta(min_length=1, max_length=128)]
Timestamp = Annotated[int, Meta(ge=0, le=MAX_EPOCH_MS)] | Annotated[
    str, Meta(pattern=RFC3339_PATTERN)]
Scalar = Int | float | str | bool
NonNegative = Annotated[int, Meta(ge=0, le=2**63 - 1)] | Annotated[float, Meta(ge=0)]
Probability = Annotated[int, Meta(ge=0, le=1)] | Annotated[float, Meta(ge=0, le=1)]


class Prediction(TypedDict):
    prediction_id: Ident
    model: Name
    model_version: Ident
    features: Annotated[dict[str, Scalar | None], Meta(max_length=MAX_FEATURES)]
    prediction: Scalar
    timestamp: NotRequired[Timestamp]
    scores: NotRequired[dict[str, Probability]]
    latency_ms: NotRequired[NonNegative]
    cost: NotRequired[NonNegative]
    segment: NotRequired[dict[str, str]]


class Outcome(TypedDict):
    prediction_id: Ident
    model: Name
    label: Scalar
    timestamp: NotRequired[Timestamp]


class Input(TypedDict):
    source: Name
    record: dict[str, Any]
    timestamp: NotRequired[Timestamp]
    record_id: NotRequired[Ident]


class ModelEvent(TypedDict):
    model: Name
    version: Ident
    event: Literal["deployed", "retrain_started", "retrain_completed", "retrain_failed",
                   "rolled_back"]
    timestamp: NotRequired[Timestamp]
    metrics: NotRequired[dict[str, Int | float]]
    trigger_id: NotRequired[Ident]
    reference: NotRequired[Annotated[str, Meta(min_length=1, max_length=1024)]]


def _decoder(t: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(t | list[t])


#: The fast decoder of each spec (by identity: specs are module constants).
DECODERS: dict[int, msgspec.json.Decoder[Any]] = {
    id(PREDICTION): _decoder(Prediction), id(OUTCOME): _decoder(Outcome),
    id(INPUT): _decoder(Input), id(MODEL_EVENT): _decoder(ModelEvent),
}


#: The field holding each spec's name (checked against NAME_PATTERN after decoding).
NAME_KEYS: dict[int, str] = {id(PREDICTION): "model", id(OUTCOME): "model",
                             id(INPUT): "source", id(MODEL_EVENT): "model"}


def fast_decoder(spec: Spec) -> msgspec.json.Decoder[Any] | None:
    return DECODERS.get(id(spec))
