"""``rpmetric models``: the zoo as a table, with published NIGHTS numbers."""

from __future__ import annotations

import json

from ..spec import default_model, get_spec, list_models
from .common import format_table


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo with published NIGHTS 2AFC numbers",
                       description="List the model zoo. NIGHTS 2AFC accuracy in percent: clean, under APGD "
                                   "l-inf 4/255 and l2 3, as published (source column).")
    p.add_argument("--json", action="store_true", help="print the specs as JSON instead of a table")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def run(args) -> int:
    specs = [get_spec(n) for n in list_models()]
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return 0
    rows = []
    for s in specs:
        pub = s.published[0] if s.published else None
        training = f"{s.training['method']} {s.training['eps']}" if s.training else "clean"
        name = s.name + (" (default)" if s.name == default_model() else "")
        rows.append([name, s.role, s.architecture, training, s.hub_id,
                     _fmt(pub.clean if pub else None), _fmt(pub.linf if pub else None), _fmt(pub.l2 if pub else None),
                     pub.source if pub else ""])
    print(format_table(rows, ["name", "role", "architecture", "training", "hub id",
                              "clean", "linf 4/255", "l2 3", "source"]))
    return 0
