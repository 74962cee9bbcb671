"""Strict validation of Response objects and streaming events against the Open Responses schema
(``openresponses-types``: pydantic models generated from the published OpenAPI document)."""

from __future__ import annotations

import json

from openresponses_types import types as schema
from pydantic import BaseModel


def _event_models() -> dict[str, type[BaseModel]]:
    """Streaming event type -> its schema model."""
    found: dict[str, type[BaseModel]] = {}
    for name in dir(schema):
        model = getattr(schema, name)
        if name.endswith("StreamingEvent") and isinstance(model, type) and issubclass(model, BaseModel):
            kind = model.model_fields["type"].annotation
            values = [m.value for m in kind] if isinstance(kind, type) else list(getattr(kind, "__args__", ()))
            found.update(dict.fromkeys(values, model))
    return found


EVENTS = _event_models()


def check_response(data: dict) -> None:
    """Raises pydantic's ValidationError naming every field the schema refuses (strict: no coercion)."""
    schema.ResponseResource.model_validate_json(json.dumps(data), strict=True)


def check_event(event: dict) -> None:
    """Validates an event of a type the schema defines (custom-tool events and the like are OpenAI's own)."""
    model = EVENTS.get(event["type"])
    if model is not None:
        model.model_validate_json(json.dumps(event), strict=True)
