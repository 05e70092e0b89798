"""Print the configuration reference table (markdown) from the config dataclasses.

``docs/configuration.md`` embeds this output between markers; a test checks they agree, so the
reference cannot drift from the code. Regenerate with ``python docs/make_config_table.py --write``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from orchestrix.config import CONFIG_CLASSES

BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
DOC = Path(__file__).with_name("configuration.md")


def table() -> str:
    rows: dict[str, dict] = {}
    for mode, config_class in CONFIG_CLASSES.items():
        for spec in dataclasses.fields(config_class):
            if spec.name == "mode":
                continue
            default = spec.default
            if default is dataclasses.MISSING:
                default = spec.default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(default):
                default = dataclasses.asdict(default)
            row = rows.setdefault(spec.name, {"meta": spec.metadata, "defaults": {}})
            row["defaults"].setdefault(_json(default), []).append(mode)
    lines = ["| key | expects | default | modes | what it does |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        defaults = row["defaults"]
        modes = [mode for modes in defaults.values() for mode in modes]
        if len(defaults) == 1:
            default_text = f"`{next(iter(defaults))}`"
        else:
            default_text = "; ".join(f"`{d}` ({', '.join(m)})" for d, m in defaults.items())
        modes_text = "all" if len(modes) == len(CONFIG_CLASSES) else ", ".join(modes)
        meta = row["meta"]
        lines.append(
            f"| `{name}` | {meta['expected']} | {default_text} | {modes_text} | {meta['doc']} |"
        )
    return "\n".join(lines)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def embedded() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


if __name__ == "__main__":
    if "--write" in sys.argv:
        text = DOC.read_text()
        head, tail = text[: text.index(BEGIN) + len(BEGIN)], text[text.index(END) :]
        DOC.write_text(f"{head}\n{table()}\n{tail}")
    else:
        print(table())
