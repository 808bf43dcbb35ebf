"""``rpmetric embed | search | dedup | classify``: embedding stores and what they are for.

``embed`` writes a store (resumable, sharded, torchrun-aware, or built by Ray Data with ``--engine ray``); the other three read stores.
Query images are embedded with the store's own model, so distances compare.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import (add_device_option, add_html_option, add_model_option, at_least, check_html_option, finite,
                     format_distance, format_table)

ENGINES = ("local", "ray")
_RAY_OPTIONS = ("address", "num_workers", "num_gpus_per_worker")  # only with --engine ray


def register(sub) -> None:
    _register_embed(sub)
    _register_search(sub)
    _register_dedup(sub)
    _register_classify(sub)


def register_eval_retrieval(datasets) -> None:
    """Add ``retrieval`` under ``rpmetric eval`` (``datasets`` is eval's sub-command action)."""
    from ..attacks import add_attack_options
    from ..stores.knn import VOTES
    from ..stores.robust import TASKS

    q = datasets.add_parser(
        "retrieval", help="kNN label or duplicate retrieval accuracy, clean and under APGD",
        description="Accuracy of retrieval decisions for query images listed in --queries, on clean images and, "
                    "with --attack, on images perturbed by APGD-CE (at the model's input size, in [0, 1]) to "
                    "change the decision. --task knn: the CSV has columns path,label and STORE's images are "
                    "labelled by --labels; correct means the kNN vote gives the true label. --task duplicate: "
                    "the CSV has columns path,match naming each query's true duplicate in STORE; correct means "
                    "the nearest stored image is that duplicate.",
    )
    q.add_argument("store", type=Path, metavar="STORE", help="store folder written by `rpmetric embed`")
    q.add_argument("--queries", type=Path, required=True, metavar="FILE.csv",
                   help="query images with their truth: columns path,label (knn) or path,match (duplicate); "
                        "paths relative to the CSV's folder")
    q.add_argument("--task", choices=TASKS, default="knn", help="which decision to evaluate (default: knn)")
    q.add_argument("--labels", type=Path, default=None, help="with --task knn: CSV path,label for STORE's images")
    q.add_argument("--k", type=at_least(1), default=5, help="with --task knn: neighbours that vote (default: 5)")
    q.add_argument("--vote", choices=VOTES, default="majority", help="with --task knn: the vote rule (default: majority)")
    q.add_argument("--model", default=None, help="embed queries with this model instead of the store's; warns if it differs")
    add_device_option(q)
    q.add_argument("--batch-size", type=at_least(1), default=16, help="queries attacked at once (default: 16)")
    q.add_argument("--json", action="store_true", help="print JSON (with one record per query) instead of a table")
    q.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    add_attack_options(q, target="each query image", samples="queries", counterattack=False)
    q.set_defaults(func=run_eval_retrieval)


# -- parsers -----------------------------------------------------------------------------------
def _register_embed(sub) -> None:
    from ..stores.store import DTYPES

    p = sub.add_parser(
        "embed", help="embed a folder of images (or dataset shards) into an embedding store",
        description="Embed every file of SOURCE into the store folder --out. SOURCE is a folder, walked "
                    "recursively (symlinked folders and files are followed, each real folder once; hidden ones "
                    "are left out), or a text file with one path per line: relative paths are relative to the "
                    "list file's folder, not to the working directory. Unreadable files are skipped and listed "
                    "in the manifest; a SOURCE with no readable image is an error. Rerunning an interrupted build "
                    "with the same arguments resumes it (finished shards are kept). A rerun after files of SOURCE "
                    "were added, removed or changed (size or mtime) is refused: --update embeds only the new and "
                    "changed files and drops the removed ones, --overwrite starts afresh. Under torchrun each "
                    "process embeds its share of the shards and rank 0 writes the manifest (--out must be on a "
                    "shared filesystem). SOURCE may also name WebDataset .tar or Parquet .parquet shards (a path, an "
                    "fsspec URL or a brace pattern such as 'shards/{00000..00127}.tar'): each input shard is one "
                    "store shard, rows keep the samples' keys, URLs and captions, and a corrupt sample or a "
                    "truncated shard is listed with its reason. --engine ray builds the same store with a Ray Data "
                    "pipeline: decoding in Ray tasks, the model in an actor pool of --num-workers actors, a dead "
                    "worker retried by Ray (pip install \"rpmetric[ray]\").",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="folder of images, a text file with one path per line (relative to the list file's folder), "
                        "or WebDataset/Parquet shards (path, URL or brace pattern)")
    p.add_argument("--out", type=Path, required=True, metavar="STORE", help="store folder to create or resume")
    add_model_option(p)
    add_device_option(p)
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="stored precision (default: float16)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="DataLoader workers decoding images (default: up to 4)")
    p.add_argument("--shard-size", type=at_least(1), default=1024,
                   help="files per shard, the unit an interruption can lose (default: 1024)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="delete an existing store in --out and start again")
    again.add_argument("--update", action="store_true",
                       help="bring the store in --out up to date with a changed SOURCE: embed new and changed files, "
                            "drop removed ones")
    p.add_argument("--image-column", default=None, metavar="NAME",
                   help="Parquet column of the image bytes (default: the first of jpg, jpeg, png, webp, image, img, "
                        "else the first bytes column)")
    p.add_argument("--key-column", default=None, metavar="NAME",
                   help="Parquet column of the sample keys (default: key if present, else FILE_STEM/ROW)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray engine", 'with --engine ray (pip install "rpmetric[ray]")')
    ray.add_argument("--engine", choices=ENGINES, default="local",
                     help="local: this process (or torchrun's); ray: a Ray Data pipeline, decoding in Ray tasks and "
                          "embedding in an actor pool, writing the same store (default: local)")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="Ray cluster to connect to, e.g. ray://head:10001 or auto (default: RAY_ADDRESS if set, "
                          "else a new local cluster)")
    ray.add_argument("--num-workers", type=at_least(1), default=None, metavar="K",
                     help="actors in the pool, each holding the model once (default: the cluster's GPUs divided by "
                          "--num-gpus-per-worker, else half its CPUs)")
    ray.add_argument("--num-gpus-per-worker", type=finite(0), default=0.0, metavar="G",
                     help="GPUs each actor reserves; fractions share a GPU (default: 0, the CPUs)")
    p.set_defaults(func=run_embed, rerun=((), ("--overwrite",)))  # the same command resumes


def _add_query_options(p) -> None:
    p.add_argument("store", type=Path, metavar="STORE", help="store folder written by `rpmetric embed`")
    p.add_argument("queries", nargs="*", type=Path, metavar="QUERY",
                   help="query image files, or folders of images (their unreadable files are skipped and listed)")
    p.add_argument("--query-store", type=Path, default=None,
                   help="use the embeddings of this store (same model) as the queries instead of image files")
    p.add_argument("--model", default=None,
                   help="embed queries with this model instead of the store's (e.g. its folder moved); warns if it differs")
    add_device_option(p)
    p.add_argument("--batch-size", type=at_least(1), default=32, help="query images per forward pass (default: 32)")
    _add_index_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_index_options(p, when: str = "") -> None:
    from ..stores.index import INDEXES

    p.add_argument("--index", choices=INDEXES, default="auto",
                   help=f"{when}exact: torch; faiss: FAISS flat (exact); ivf: FAISS IVF (approximate, fast); "
                        "auto: ivf for at least 1,000,000 stored vectors and 10,000 queries, else exact (default: auto)")
    p.add_argument("--nprobe", type=at_least(1), default=None,
                   help=f"{when}IVF cells searched per query (default: 1/8 of them)")


def _register_search(sub) -> None:
    p = sub.add_parser(
        "search", help="nearest neighbours of query images in a store",
        description="The K nearest stored images of each query by cosine distance (1 - cos).",
    )
    _add_query_options(p)
    p.add_argument("--k", type=at_least(1), default=10, help="neighbours per query (default: 10)")
    add_html_option(p, "each query beside its neighbours, with their distances")
    p.set_defaults(func=run_search)


def _register_dedup(sub) -> None:
    from ..stores.dedup import AUTO_APPROX_MIN, DEDUP_METHODS, DEFAULT_PROBES
    from ..stores.index import INDEXES

    p = sub.add_parser(
        "dedup", help="near-duplicate groups in a store, or images too close to another store",
        description="Group the images of STORE whose cosine distance (1 - cos) is at most --threshold "
                    "(connected components), as CSV `group,keep,path,distance_to_first` (keep=1 marks the "
                    "first member, the one to keep). --method chooses how pairs are found: exact scans all "
                    "pairs (quadratic); cluster (k-means cells, SemDeDup-style) and ivf (FAISS IVF range search) "
                    "compare each image only with the images of its --nprobe nearest of --clusters cells, and "
                    "confirm every pair with the exact distance, so they can miss pairs but never add one. With "
                    "--against OTHER, list instead the images of STORE within --threshold of any image of OTHER, "
                    "as CSV `path,match,distance`, found the same way (or, with --index, by nearest-neighbour "
                    "search).",
    )
    p.add_argument("store", type=Path, metavar="STORE", help="store folder written by `rpmetric embed`")
    p.add_argument("--threshold", type=float, required=True, help="largest distance that counts as a duplicate")
    p.add_argument("--against", type=Path, default=None, metavar="OTHER_STORE",
                   help="flag images of STORE too close to any image of this store (e.g. test or protected images)")
    p.add_argument("--out", type=Path, default=None, help="write the CSV here instead of stdout")
    p.add_argument("--method", choices=DEDUP_METHODS, default="auto",
                   help=f"exact, cluster or ivf (both need FAISS); auto: exact below {AUTO_APPROX_MIN:,} images "
                        "(with --against: below that many squared, STORE x OTHER), else cluster (default: auto)")
    p.add_argument("--clusters", type=at_least(1), default=None,
                   help="cells of cluster and ivf (default: sqrt(N), at most N/39)")
    p.add_argument("--nprobe", type=at_least(1), default=None,
                   help=f"cells each image visits with cluster and ivf: more finds more pairs, slower "
                        f"(default: {DEFAULT_PROBES}); with --index ivf, IVF cells searched per query (default: 1/8)")
    p.add_argument("--index", choices=INDEXES, default="auto",
                   help="with --against, instead of --method: find each image's nearest image of OTHER with this "
                        "search index (see `rpmetric search`)")
    add_html_option(p, "one row per group, largest first, with a group-size filter (with --against, each flagged "
                       "image beside its match)")
    p.set_defaults(func=run_dedup)


def _register_classify(sub) -> None:
    from ..stores.knn import VOTES

    p = sub.add_parser(
        "classify", help="kNN classification of query images against a labelled store",
        description="Label each query by a vote of its K nearest labelled images of STORE (labels from a CSV "
                    "with columns path,label; stored images without a label do not vote).",
    )
    _add_query_options(p)
    p.add_argument("--labels", type=Path, required=True, help="CSV with columns path,label for the store's images")
    p.add_argument("--k", type=at_least(1), default=5, help="neighbours that vote (default: 5)")
    p.add_argument("--vote", choices=VOTES, default="majority",
                   help="majority: one vote each; distance: weighted by 1/distance (default: majority)")
    add_html_option(p, "each query with its label and vote share, beside its labelled neighbours")
    p.set_defaults(func=run_classify)


# -- commands ----------------------------------------------------------------------------------
def run_embed(args) -> int:
    from .. import distributed
    from ..metric import RobustDistance
    from ..stores.sources import is_dataset, plan_inputs
    from ..stores.store import build_store, missing_source

    from ..files import check_writable

    if is_dataset(args.source):  # shards and columns are checked before the model loads
        plan_inputs(args.source, args.image_column, args.key_column)
    elif not (Path(args.source).is_dir() or Path(args.source).is_file()):
        raise missing_source(args.source)
    check_writable(args.out, "--out", folder=True)
    args.progress = args.out  # finished shards survive an interruption (see cli.main)
    if args.engine == "ray":
        return _embed_with_ray(args)
    given = [o for o in _RAY_OPTIONS if getattr(args, o) not in (None, 0.0)]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} configures the Ray engine; add --engine ray, or drop it")
    distributed.init_from_env()
    try:
        metric = RobustDistance(args.model, device=distributed.local_device(args.device))
        store = build_store(args.source, args.out, metric, dtype=args.dtype, shard_size=args.shard_size,
                            batch_size=args.batch_size, num_workers=args.workers, overwrite=args.overwrite,
                            update=args.update, progress=not args.quiet, image_column=args.image_column,
                            key_column=args.key_column)
    finally:
        distributed.shutdown()
    if store is not None:
        print(f"{len(store)} images embedded into {store.path} ({len(store.skipped)} unreadable files skipped, "
              f"listed in {store.path / 'manifest.json'})")
    return 0


def _embed_with_ray(args) -> int:
    """``embed --engine ray``: the store that one process writes, built by a Ray Data pipeline."""
    from ..metric import RobustDistance
    from ..stores import ray as engine

    for option, value, why in (("--device", args.device, "each Ray worker uses a GPU when --num-gpus-per-worker "
                                                          "is above 0, else the CPUs"),
                               ("--workers", args.workers, "Ray tasks decode the images")):
        if value is not None:
            raise ValueError(f"{option} applies to --engine local; with --engine ray {why}: drop {option}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--engine ray runs one driver, not one process per GPU: run it without torchrun")
    engine.require_ray()  # before the model loads
    metric = RobustDistance(args.model, device="cpu")  # the driver plans the store; the actors embed
    store = engine.build_store(args.source, args.out, metric, address=args.address, num_workers=args.num_workers,
                               num_gpus_per_worker=args.num_gpus_per_worker, dtype=args.dtype,
                               shard_size=args.shard_size, batch_size=args.batch_size, overwrite=args.overwrite,
                               update=args.update, progress=not args.quiet, image_column=args.image_column,
                               key_column=args.key_column)
    print(f"{len(store)} images embedded into {store.path} by Ray ({len(store.skipped)} unreadable files skipped, "
          f"listed in {store.path / 'manifest.json'})")
    return 0


def _queries(args, store):
    """``(embeddings, names)`` of the queries: image files/folders, or another store.

    A named query file that cannot be read is an error; unreadable files found in a query folder
    are skipped and listed on stderr, as ``embed`` skips them.
    """
    from ..stores.store import EmbeddingStore, embed_images, list_files

    if (args.query_store is None) == (not args.queries):
        raise ValueError("give query images (QUERY...) or --query-store STORE, exactly one of them")
    if args.query_store is not None:
        other = EmbeddingStore(args.query_store)
        store.check_same_model(other)
        return other, other.files  # streamed by the search
    files, named = [], set()
    for q in args.queries:
        if q.is_dir():
            root, rel = list_files(q)
            files.extend(str(root / r) for r in rel)
        elif q.is_file():
            files.append(str(q))
            named.add(str(q))
        else:
            raise FileNotFoundError(f"Query {q} does not exist")
    metric = store.load_metric(args.model, args.device)
    emb, names, skipped = embed_images(metric, files, batch_size=args.batch_size)
    bad = [s for s in skipped if s["path"] in named]
    if bad:
        raise ValueError(f"{len(bad)} query file(s) cannot be read: " + "; ".join(s["reason"] for s in bad[:3]))
    for s in skipped:
        print(f"rpmetric {args.command}: skipped {s['reason']}", file=sys.stderr)
    return emb, names


def _metadata(store, i: int) -> dict:
    """A dataset row's URL and caption, for the JSON outputs (nothing for a folder's store, whose
    outputs stay as they were)."""
    return {"url": store.urls[i], "caption": store.captions[i]} if store.kind else {}


def run_search(args) -> int:
    from ..stores.index import search
    from ..stores.store import EmbeddingStore

    check_html_option(args)
    store = EmbeddingStore(args.store)
    queries, names = _queries(args, store)
    hits = search(store, queries, args.k, index=args.index, nprobe=args.nprobe)  # streams the store
    results = [
        {"query": name, "neighbours": [{"rank": r + 1, "path": store.file(i), "distance": d, **_metadata(store, i)}
                                       for r, (i, d) in enumerate(zip(idx, dist)) if i >= 0]}
        for name, idx, dist in zip(names, hits.indices.tolist(), hits.distances.tolist())
    ]
    if args.json:
        print(json.dumps({"store": str(store.path), "index": hits.index, "results": results}, indent=1))
    else:
        rows = [(r["query"], n["rank"], format_distance(n["distance"]), n["path"]) for r in results for n in r["neighbours"]]
        print(format_table(rows, ["query", "rank", "distance", "path"]))
    _search_page(args, store, names, results)
    return 0


def run_dedup(args) -> int:
    import torch

    from ..files import write_csv
    from ..stores.dedup import find_near, group_duplicates
    from ..stores.rows import as_rows, pair_distances
    from ..stores.store import EmbeddingStore

    by_index = args.index != "auto"
    if by_index and args.against is None:
        raise ValueError("--index chooses how --against OTHER_STORE is searched; grouping one store's duplicates "
                         "uses --method, so drop --index or add --against")
    if by_index and (args.method != "auto" or args.clusters is not None):
        raise ValueError(f"--index {args.index} and --method/--clusters both choose how OTHER_STORE is searched; "
                         "give one of them")
    if args.method == "exact" and (args.clusters is not None or args.nprobe is not None):
        raise ValueError("--clusters and --nprobe tune --method cluster|ivf|auto; --method exact scans every pair, "
                         "so drop them")
    check_html_option(args)
    from ..stores.heap import bound_heap_growth

    bound_heap_growth()  # a 10 M store's pass frees GBs of temporaries, which glibc's heap would keep
    store = EmbeddingStore(args.store)  # streamed, never materialised: stores may exceed memory
    if args.against is not None:
        other = EmbeddingStore(args.against)
        store.check_same_model(other)
        how = dict(index=args.index) if by_index else dict(method=args.method, clusters=args.clusters)
        rows, ref, dist = find_near(store, other, args.threshold, nprobe=args.nprobe, **how)
        header = ["path", "match", "distance"]
        table = [(store.file(i), other.file(j), format_distance(d)) for i, j, d in zip(rows.tolist(), ref.tolist(), dist.tolist())]
        summary = f"{len(table)} of {len(store)} images are within {args.threshold} of an image of {other.path}"
    else:
        groups = group_duplicates(store, args.threshold, method=args.method, clusters=args.clusters, probes=args.nprobe,
                                  progress=True)  # bars on a terminal only
        header = ["group", "keep", "path", "distance_to_first"]
        firsts = torch.tensor([members[0] for members in groups for _ in members], dtype=torch.long)
        flat = torch.tensor([m for members in groups for m in members], dtype=torch.long)
        stored = as_rows(store, "store")
        d = pair_distances(stored, stored, firsts, flat).tolist()
        def group_rows():
            at = 0
            for g, members in enumerate(groups, start=1):
                yield from ((g, int(m == members[0]), store.file(m), format_distance(d[at + k]),
                             *_metadata(store, m).values()) for k, m in enumerate(members))
                at += len(members)

        # Streamed into the CSV unless a review page needs the table: millions of rows of strings
        # would otherwise be held at once (the 10 M store's dedup writes 1.5 M).
        table = list(group_rows()) if args.html is not None else group_rows()
        header += list(_metadata(store, 0)) if len(store) else []
        summary = f"{len(groups)} groups of near-duplicates covering {len(flat)} of {len(store)} images"
    write_csv(args.out, header, table)
    print(summary, file=sys.stderr)
    if args.html is not None:
        _dedup_page(args, store, header, table, other if args.against is not None else None)
    return 0


def run_classify(args) -> int:
    from ..stores.knn import knn_classify
    from ..stores.store import EmbeddingStore

    check_html_option(args)
    store = EmbeddingStore(args.store)
    labelled, labels = store.labelled(args.labels)
    queries, names = _queries(args, store)
    predictions = knn_classify(store.select(labelled), labels, queries, args.k, vote=args.vote,
                               index=args.index, nprobe=args.nprobe)  # streams the labelled rows
    results = [
        {"query": name, "label": p.label, "score": p.score,
         "neighbours": [{"path": store.file(labelled[i]), "label": labels[i], "distance": d,
                         **_metadata(store, labelled[i])}
                        for i, d in zip(p.neighbours, p.distances)]}
        for name, p in zip(names, predictions)
    ]
    if args.json:
        print(json.dumps({"store": str(store.path), "k": args.k, "vote": args.vote, "results": results}, indent=1))
    else:
        print(format_table([(r["query"], r["label"], f"{r['score']:.3f}") for r in results], ["query", "label", "score"]))
    _search_page(args, store, names, results, classify=True)
    return 0


def _search_page(args, store, names, results, classify: bool = False) -> None:
    """``--html``: the review page of search or classify results. A query store's names are files
    when it is a folder's store (absolute paths), else a dataset's keys."""
    if args.html is None:
        return
    from ..report import write_search_page

    query_files = args.query_store is None or all(Path(n).is_absolute() for n in names)
    page = write_search_page(args.html, results, store=str(store.path), query_files=query_files,
                             classify=classify, progress=True)
    print(f"rpmetric {args.command}: review page written to {page}", file=sys.stderr)


def _dedup_page(args, store, header, table, other=None) -> None:
    """``--html``: the review page of the rows dedup wrote to its CSV (``other``: the --against store)."""
    from ..report import write_dedup_page, write_near_page

    rows = [dict(zip(header, row)) for row in table]
    if other is not None:
        page = write_near_page(args.html, rows, threshold=args.threshold, source=str(store.path), other=str(other.path),
                               is_dataset=bool(store.kind), other_is_dataset=bool(other.kind), progress=True)
    else:
        page = write_dedup_page(args.html, rows, threshold=args.threshold, source=str(store.path), progress=True)
    print(f"rpmetric dedup: review page written to {page}", file=sys.stderr)


def run_eval_retrieval(args) -> int:
    import torch

    from ..attacks import AttackConfig, attack_config_from_args
    from ..files import read_csv_columns, write_json
    from ..stores.robust import evaluate_retrieval_attack
    from ..stores.store import EmbeddingStore, model_input

    options = attack_config_from_args(args)  # checks the attack options before any work
    if (args.task == "knn") != (args.labels is not None):
        raise ValueError("--labels is needed with --task knn, and only then")
    store = EmbeddingStore(args.store)
    truth_column = "label" if args.task == "knn" else "match"
    rows = read_csv_columns(args.queries, ("path", truth_column))
    if not rows:
        raise ValueError(f"{args.queries} lists no queries")
    base = args.queries.resolve().parent
    reference, labels = store, None  # streamed by the decisions, never store.embeddings()
    if args.task == "knn":
        labelled, labels = store.labelled(args.labels)
        reference = store.select(labelled)
        truth = [r["label"] for r in rows]
    else:
        truth = store.locate([r["match"] for r in rows], base, source=args.queries)
        if None in truth:
            raise ValueError(f"{args.queries} names as a match a file that store {store.path} skipped as unreadable")
    missing = next((base / r["path"] for r in rows if not (base / r["path"]).is_file()), None)
    if missing is not None:  # before the model loads
        raise FileNotFoundError(f"Query image not found: {missing} (listed in {args.queries})")
    metric = store.load_metric(args.model, args.device)
    # Decoded as the store's images were, so an unattacked query is embedded as in the store; kept in
    # uint8 (a quarter of float32's memory) until its batch is evaluated.
    images = torch.stack([model_input(base / r["path"], metric.spec.preprocessing) for r in rows])
    config, n_samples = None, None
    if options is not None:
        options = dict(options)
        n_samples = options.pop("n_samples")  # the other keys are AttackConfig.create's arguments
        config = AttackConfig.create(**options)
    result = evaluate_retrieval_attack(metric, reference, images, truth, task=args.task, labels=labels, k=args.k,
                                       vote=args.vote, config=config, batch_size=args.batch_size,
                                       n_samples=n_samples, names=[r["path"] for r in rows])
    data = {"store": str(store.path), "queries": str(args.queries), **result.to_dict()}
    if args.task == "duplicate":  # name stored images by path rather than by row
        files = store.files
        for record in data["records"]:
            record.update({key: files[record[key]] for key in ("truth", "clean", "attacked") if key in record})
    if args.out is not None:
        write_json(args.out, data)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        attack = "-" if config is None else f"{config.norm.value} eps {config.eps:.6g}, {config.steps} steps"
        robust = "-" if result.robust_accuracy is None else f"{100 * result.robust_accuracy:.1f}"
        if result.robust_accuracy is not None and result.n_attacked < result.n:
            robust += f" (first {result.n_attacked})"
        print(format_table([(args.task, result.n, f"{100 * result.clean_accuracy:.1f}", robust, attack)],
                           ["task", "queries", "clean %", "attacked %", "attack"]))
    return 0
