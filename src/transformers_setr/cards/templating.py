"""The cards' templates: Markdown files in `templates/` (package data), filled with `string.Template`, whose
placeholders may read an attribute or key of a field (`$config.num_hidden_layers`, `${preset.mmseg_v0_config}.py`,
`$text.domain`); the citation and the dataset texts they share."""

import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

TEMPLATES = files(__package__).joinpath("templates")


class CardTemplate(Template):
    """`string.Template` whose placeholders may name an attribute or key of a field: `$config.num_hidden_layers`,
    `${preset.mmseg_v0_config}.py`, `$text.domain`."""

    idpattern = r"(?a:[_a-z][_a-z0-9]*(?:\.[_a-z][_a-z0-9]*)*)"


class TemplateFields(dict):
    """The fields of a template; a dotted name reads the attributes (or keys) of a field."""

    def __missing__(self, name: str) -> Any:
        head, *path = name.split(".")
        if not path:
            raise KeyError(name)
        value = self[head]
        for part in path:
            value = value[part] if isinstance(value, Mapping) else getattr(value, part)
        return value


@cache
def template(name: str) -> CardTemplate:
    """`templates/{name}`, read once."""
    return CardTemplate(TEMPLATES.joinpath(name).read_text(encoding="utf-8"))


def fill(name: str, **fields: Any) -> str:
    """`templates/{name}` filled in."""
    return template(name).substitute(TemplateFields(fields))


def fill_paragraph(name: str, **fields: Any) -> str:
    """A paragraph template filled in, without its file's final newline."""
    return fill(name, **fields).rstrip("\n")


CITATION = fill_paragraph("citation.bib")
DATASET_TEXTS: dict[str, dict[str, Any]] = json.loads(TEMPLATES.joinpath("datasets.json").read_text(encoding="utf-8"))
"""What the cards say of each dataset: a typical original image (height, width) for the worked examples, its file
name in the snippets, the domain, and how labels are stored and shown."""
