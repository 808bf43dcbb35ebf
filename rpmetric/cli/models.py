"""``rpmetric models``: the zoo as a table, with published NIGHTS numbers."""

from __future__ import annotations

import json

from ..models.spec import Family, default_model, get_spec, list_models
from .common import format_table


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo with published NIGHTS 2AFC numbers",
                       description="List the model zoo. NIGHTS 2AFC accuracy in percent: clean, under APGD "
                                   "l-inf 4/255 and l2 3, as published (source column). A licence marked * was "
                                   "inferred, not checked against the model's Hub page (see --json: 'inferred').")
    p.add_argument("--json", action="store_true", help="print the specs as JSON instead of a table")
    p.add_argument("--robust", action="store_true", help="only adversarially trained encoders (no clean baselines)")
    p.add_argument("--family", choices=[f.value for f in Family],
                   help="only models whose checkpoint has this file layout (open_clip, timm, transformers ViT or CLIP)")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _licence(spec) -> str:
    """The licence, marked ``*`` where the zoo says it was inferred rather than checked."""
    short = spec.licence.split(" (")[0] or "?"
    return short + ("*" if "licence" in spec.inferred or "not checked" in spec.licence else "")


def run(args) -> int:
    specs = [s for s in map(get_spec, list_models())
             if (s.robust or not args.robust) and (args.family is None or s.family.value == args.family)]
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return 0
    rows = []
    for s in specs:
        pub = s.published[0] if s.published else None
        training = f"{s.training['method']} {s.training['eps']}" if s.training else "clean"
        name = s.name + (" (default)" if s.name == default_model() else "")
        rows.append([name, s.role, s.architecture, training, _licence(s), s.hub_id,
                     _fmt(pub.clean if pub else None), _fmt(pub.linf if pub else None), _fmt(pub.l2 if pub else None),
                     pub.source if pub else "not published"])
    print(format_table(rows, ["name", "role", "architecture", "training", "licence", "hub id",
                              "clean", "linf 4/255", "l2 3", "source"]))
    return 0
