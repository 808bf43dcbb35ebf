"""``rpmetric download``: prefetch a model's files into the Hugging Face cache."""

from __future__ import annotations

from ..models.hub import download


def register(sub) -> None:
    p = sub.add_parser("download", help="prefetch a model's weights into the Hugging Face cache",
                       description="Fetch a model's config and weights into the Hugging Face cache (HF_HOME), "
                                   "so that later runs work offline (HF_HUB_OFFLINE=1). A head repo brings its base model too. "
                                   "When the Hub cannot be reached it fails (exit 2) rather than pass off cached files as "
                                   "checked; with HF_HUB_OFFLINE=1 it only lists what the cache holds.")
    p.add_argument("name", help="zoo name, hf-hub:ORG/NAME[@REV], or a local folder to check")
    p.set_defaults(func=run)


def run(args) -> int:
    for path in download(args.name):
        print(f"{args.name}: {path}")
    return 0
