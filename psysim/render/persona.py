"""Personas: a profile rendered into conditioning text, and the shuffled-persona control's derangement.

A persona template (``prompts/persona/*.jinja`` or the user's own file, loaded
and rendered in the sandbox of :mod:`psysim.templating`) sees the participant's
known fields in schema order, with their labels and units; a profile value is
data, never template code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..participants import Profile, ProfileSchema
from ..templating import Template

__all__ = ["PERSONA_NAMES", "PersonaField", "derangement", "persona_fields", "render_persona"]


@dataclass(frozen=True)
class PersonaField:
    """A known profile field as a persona template sees it.

    In a template, ``{{ field }}`` prints the value's text; ``field.question``,
    ``field.label``, ``field.units``, ``field.first_person`` and
    ``field.third_person`` give the schema's wording.
    """

    name: str
    value: Any
    text: str
    label: str
    question: str
    units: str
    first_person: str
    third_person: str

    @property
    def with_units(self) -> str:
        """The value followed by its units, if the schema gives any."""
        return f"{self.text} {self.units}" if self.units else self.text

    def __str__(self) -> str:
        return self.text


def persona_fields(profile: Profile, schema: ProfileSchema) -> list[PersonaField]:
    """The participant's known fields, in schema order, skipping fields marked ``persona: false``."""
    out = []
    for name, spec in schema.fields.items():
        if name not in profile.text or not spec.in_persona:
            continue
        text = profile.text[name]
        with_units = f"{text} {spec.units}" if spec.units else text
        # str.replace, not str.format or Jinja: the value is inserted once and never interpreted.
        first = spec.first_person.replace("{value}", text) if spec.first_person else f"My {spec.label} is {with_units}."
        third = (
            spec.third_person.replace("{value}", text)
            if spec.third_person
            else f"The participant's {spec.label} is {with_units}."
        )
        out.append(PersonaField(name, profile.values[name], text, spec.label, spec.question, spec.units, first, third))
    return out


#: The names a persona template may use.
PERSONA_NAMES = ("fields", "profile", "participant", "experiment")


def render_persona(template: Template, profile: Profile, schema: ProfileSchema, *, experiment: str = "") -> str:
    """The conditioning text for ``profile``.

    The template sees ``fields`` (the participant's known fields, in schema
    order, as :class:`PersonaField`), ``profile`` (the same, by name: use
    ``{% if profile.age is defined %}`` for fields some participants lack),
    ``participant`` (the id whose profile this is) and ``experiment``.
    """
    fields = persona_fields(profile, schema)
    context = {
        "fields": fields,
        "profile": {f.name: f for f in fields},
        "participant": profile.participant,
        "experiment": experiment,
    }
    return template.render(context, where=f"participant {profile.participant}")


def derangement(ids: list[str], seed: int) -> dict[str, str]:
    """A seeded random derangement: each id maps to a *different* id of the list.

    Uniform over derangements (rejection sampling of permutations; about e
    tries on average). The same ids in the same order and the same seed give
    the same mapping on every machine (Python's Mersenne Twister).
    """
    if len(ids) < 2:
        raise ValueError("a derangement needs at least two participants")
    rng = random.Random(seed)
    order = list(ids)
    while True:
        perm = order[:]
        rng.shuffle(perm)
        if all(a != b for a, b in zip(order, perm, strict=True)):
            return dict(zip(order, perm, strict=True))
