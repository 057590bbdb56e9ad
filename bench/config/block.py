"""The pydantic base of every block of a study file (the study kinds' blocks included): an
unknown key is an error naming it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
