"""When a deployment runs: a cron expression in a named time zone."""

from __future__ import annotations

import re
import zoneinfo

from pydantic import BaseModel, ConfigDict, field_validator

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]+$")


class Schedule(BaseModel):
    """When the deployment runs: a 5-field cron expression in a named time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(f"must be a 5-field cron expression like '0 2 * * *', got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like 'Europe/Berlin')") from e
        return value
