"""Pydantic models the structured-output and tool tests share (bounded, so a random
model finishes them within a small max_tokens)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=130)
    pet: Literal["cat", "dog", "none"]
    tags: list[bool] = Field(max_length=3)


class GetWeather(BaseModel):
    """Current weather in a city."""

    model_config = ConfigDict(extra="forbid")

    city: str = Field(max_length=10)
    unit: Literal["c", "f"]


class Add(BaseModel):
    """Add two small numbers."""

    model_config = ConfigDict(extra="forbid")

    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)
