"""Full-reference IQA benchmarks, read from their published layouts and score files.

Each dataset states which way its score runs (:data:`IQA_DATASETS`); the correlations are oriented
by it (see :func:`rpmetric.scoring.correlations`). Readers return :class:`ScoredPair` records (the
distorted image's file name as id, the distortion type as ``kind``), in the score file's order.

- **TID2013** ``ROOT/mos_with_names.txt`` (lines ``MOS NAME``, e.g. ``5.51429 i01_01_1.bmp``),
  ``reference_images/I01.BMP``, ``distorted_images/i01_01_1.bmp``; the name is ``i{ref}_{type}_{level}``,
  24 types (``01``..``24``); MOS 0-9, higher is better.
- **KADID-10k** ``ROOT/dmos.csv`` (``dist_img,ref_img,dmos,var``), both images in ``images/``;
  ``I01_01_01.png`` is ``I{ref}_{type}_{level}``, 25 types. Its ``dmos`` is, despite the name, a mean
  opinion score from 1 (bad) to 5: higher is better.
- **CSIQ** ``ROOT/csiq.DMOS.xlsx`` as published (its ``all_by_image`` sheet: ``image, dst_idx,
  dst_type, dst_lev, dmos_std, dmos``; read with openpyxl), or that sheet saved as ``csiq.DMOS.csv``
  with the same header; ``src_imgs/1600.png``, ``dst_imgs/awgn/1600.AWGN.1.png``. ``dst_idx`` 1-6
  are awgn, jpeg, jpeg2000, fnoise, blur, contrast (the type folders). DMOS 0-1, lower is better.
- **PIPAL** (NTIRE 2021 release) ``ROOT/Train_Ref/A0001.bmp``, ``Train_Dis/A0001_00_00.bmp`` (or
  ``Train_Dist/``), ``Train_Label/A0001.txt`` with lines ``A0001_00_00.bmp,1448.95``; ``Val_*`` alike.
  The score is an Elo rating from pairwise preferences: higher is better. The type is the name's
  first number (``_00_``), the distortion group as we read the naming; the dataset does not
  document it, so treat per-type PIPAL figures as provisional.
- **PieAPP** ``ROOT/reference_images/{train,val,test}/ref_001.png``,
  ``distorted_images/SPLIT/<one folder per reference>/distort_001_<type>_<inter|intra>_<n>.png``,
  ``labels/SPLIT/ref_001_pairwise_labels.csv`` (reference, image A, image B, probability that people
  prefer A, i.e. find it closer to the reference; train/val add an ML-estimated column, not read)
  and, for ``test`` only, ``labels/test/ref_001_per_image_score.csv`` (reference, image, score). The
  per-image score is a perceptual error (the reference scores 0): higher is worse.
- **csv**: any ``FILE.csv`` with columns ``ref,dist,mos`` and optional ``split`` and ``type``,
  paths relative to its folder (and inside it); higher is better unless told otherwise.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from ..files import extra_fields, read_csv
from .records import BadItem, ScoredPair, Triplet
from .scored import FolderIndex, RowErrors, bare_name, inside, number

__all__ = ["IQADataset", "IQA_DATASETS", "read_iqa", "read_pieapp_pairs", "read_tid2013", "read_kadid10k",
           "read_csiq", "read_pipal", "read_pieapp", "read_iqa_csv"]


@dataclass(frozen=True)
class IQADataset:
    """What a dataset's reader knows about it.

    Attributes:
        name: the ``--dataset`` value.
        higher_is_better: True when a higher published score means a better-looking image.
        score_name: what its score is called (MOS, DMOS, Elo, ...).
        splits: the splits it publishes; ``all`` for a dataset without splits.
        default_split: the one evaluated unless asked.
        url: where to download it.
    """

    name: str
    higher_is_better: bool
    score_name: str
    splits: Tuple[str, ...]
    default_split: str
    url: str


IQA_DATASETS = {
    "tid2013": IQADataset("tid2013", True, "MOS (0-9)", ("all",), "all", "https://www.ponomarenko.info/tid2013.htm"),
    "kadid10k": IQADataset("kadid10k", True, "MOS, named dmos (1-5)", ("all",), "all",
                           "https://database.mmsp-kn.de/kadid-10k-database.html"),
    "csiq": IQADataset("csiq", False, "DMOS (0-1)", ("all",), "all",
                       "https://s2.smu.edu/~eclarson/csiq.html (archived; mirrors exist)"),
    "pipal": IQADataset("pipal", True, "Elo", ("train", "val"), "train", "https://www.jasongt.com/projectpages/pipal.html"),
    "pieapp": IQADataset("pieapp", False, "perceptual error", ("train", "val", "test"), "test",
                         "https://github.com/prashnani/PerceptualImageError (dataset_README.md)"),
    "csv": IQADataset("csv", True, "mos", ("all",), "all", "your own: ref,dist,mos[,split][,type]"),
}

_CSIQ_TYPES = {1: ("awgn", "AWGN"), 2: ("jpeg", "JPEG"), 3: ("jpeg2000", "jpeg2000"), 4: ("fnoise", "fnoise"),
               5: ("blur", "BLUR"), 6: ("contrast", "contrast")}
_CSIQ_COLUMNS = ("image", "dst_idx", "dst_lev", "dmos")


def read_iqa(dataset: str, root: Union[str, Path], split: Optional[str] = None, *,
             skipped: Optional[List[BadItem]] = None, higher_is_better: Optional[bool] = None,
             allow_outside_root: bool = False) -> Tuple[List[ScoredPair], bool]:
    """``(pairs, higher_is_better)`` of one IQA dataset's split.

    Args:
        dataset: a key of :data:`IQA_DATASETS`.
        root: the dataset folder; for ``csv``, the CSV file.
        split: one of the dataset's splits (default: its ``default_split``); for ``csv``, a value of
            its ``split`` column (default: every row).
        skipped: if given, bad rows (missing images, a non-numeric score, a duplicated id) are
            appended here as :class:`BadItem` and left out instead of raising.
        higher_is_better: ``csv`` only: which way its score runs (default True).
        allow_outside_root: ``csv`` only: accept paths that lead out of the CSV's folder.

    Raises:
        ValueError: an unknown dataset or split, a score file without the expected columns, a bad
            row (the message names the file and line), no usable row.
        FileNotFoundError: a missing score file, folder or image.

    Example:
        >>> pairs, higher_is_better = read_iqa("tid2013", "/data/tid2013")  # doctest: +SKIP
        >>> pairs[0].kind, higher_is_better  # doctest: +SKIP
        ('01', True)
    """
    if dataset not in IQA_DATASETS:
        raise ValueError(f"Argument `dataset` must be one of {tuple(IQA_DATASETS)}, but got {dataset!r}.")
    info = IQA_DATASETS[dataset]
    if higher_is_better is not None and dataset != "csv":
        raise ValueError(f"Argument `higher_is_better` applies to dataset 'csv' only; {dataset} states its own "
                         f"({info.score_name}: {'higher' if info.higher_is_better else 'lower'} is better).")
    root = Path(root)
    if dataset == "csv":
        return read_iqa_csv(root, split, skipped=skipped, allow_outside_root=allow_outside_root), (
            True if higher_is_better is None else higher_is_better)
    split = info.default_split if split is None else split
    if split not in info.splits:
        raise ValueError(f"Argument `split` must be one of {info.splits} for {dataset}, but got {split!r}.")
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    reader = {"tid2013": read_tid2013, "kadid10k": read_kadid10k, "csiq": read_csiq}.get(dataset)
    if reader is not None:
        pairs = reader(root, skipped=skipped)
    elif dataset == "pipal":
        pairs = read_pipal(root, split, skipped=skipped)
    else:
        pairs = read_pieapp(root, split, skipped=skipped)
    return pairs, info.higher_is_better


def _score_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _text_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """``(line number, text)`` of a score file's non-blank lines (UTF-8, or Latin-1 where it is not)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    for number_, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number_, line


def _nonempty(pairs: list, source: Path) -> list:
    if not pairs:
        raise ValueError(f"{source} holds no usable row.")
    return pairs


def read_tid2013(root: Path, *, skipped: Optional[List[BadItem]] = None) -> List[ScoredPair]:
    """TID2013's 3000 distorted images with their MOS (see the module docstring for the layout)."""
    source = _score_file(root / "mos_with_names.txt", "TID2013 score file (mos_with_names.txt)")
    refs, dists = FolderIndex(root / "reference_images"), FolderIndex(root / "distorted_images")
    errors, pairs = RowErrors(source, skipped), []
    for line, text in _text_lines(source):
        fields = text.split()
        ident = fields[1] if len(fields) > 1 else None
        try:
            if len(fields) != 2:
                raise ValueError(f"expected `MOS NAME`, but got {text.strip()!r}")
            name = bare_name(fields[1], "name")
            match = re.fullmatch(r"i(\d+)_(\d+)_(\d+)\.\w+", name, flags=re.IGNORECASE)
            if match is None:
                raise ValueError(f"the name {name!r} is not of the form i01_01_1.bmp (reference, type, level)")
            mos = number(fields[0], "MOS")
            errors.unique(name, line)
            ref = refs.get_stem(f"i{match[1]}")
            pairs.append(ScoredPair(name, ref, dists.get(name), mos, f"{int(match[2]):02d}"))
        except (ValueError, FileNotFoundError) as err:
            errors.bad(line, ident, err)
    return _nonempty(pairs, source)


def read_kadid10k(root: Path, *, skipped: Optional[List[BadItem]] = None) -> List[ScoredPair]:
    """KADID-10k's 10125 distorted images with their (higher-is-better) ``dmos``."""
    source = _score_file(root / "dmos.csv", "KADID-10k score file (dmos.csv)")
    images = FolderIndex(root / "images")
    errors, pairs = RowErrors(source, skipped), []
    for line, row in _csv_rows(source, ("dist_img", "ref_img", "dmos"), errors):
        ident = (row["dist_img"] or "").strip() or None
        try:
            name = bare_name(row["dist_img"], "dist_img")
            match = re.fullmatch(r"i\d+_(\d+)_\d+\.\w+", name, flags=re.IGNORECASE)
            score = number(row["dmos"], "dmos")
            errors.unique(name, line)
            ref = images.get(bare_name(row["ref_img"], "ref_img"))
            pairs.append(ScoredPair(name, ref, images.get(name), score,
                                    f"{int(match[1]):02d}" if match else None))
        except (ValueError, FileNotFoundError) as err:
            errors.bad(line, ident, err)
    return _nonempty(pairs, source)


def read_csiq(root: Path, *, skipped: Optional[List[BadItem]] = None) -> List[ScoredPair]:
    """CSIQ's 866 distorted images with their DMOS (lower is better), from ``csiq.DMOS.xlsx`` or its
    ``all_by_image`` sheet saved as ``csiq.DMOS.csv``."""
    csv_path, xlsx_path = root / "csiq.DMOS.csv", root / "csiq.DMOS.xlsx"
    if csv_path.is_file():
        source, rows = csv_path, _csiq_csv_rows(csv_path)
    elif xlsx_path.is_file():
        source, rows = xlsx_path, _csiq_xlsx_rows(xlsx_path)
    else:
        raise FileNotFoundError(f"CSIQ score file not found: {xlsx_path} (or its all_by_image sheet saved as "
                                f"{csv_path.name})")
    refs = FolderIndex(root / "src_imgs")
    type_folders = {}
    errors, pairs = RowErrors(source, skipped), []
    for line, row in rows:
        ident = None
        try:
            image = bare_name(_cell(row.get("image")), "image")
            kind = _CSIQ_TYPES.get(int(number(row.get("dst_idx"), "dst_idx")))
            if kind is None:
                raise ValueError(f"`dst_idx` must be 1-6 ({', '.join(t for t, _ in _CSIQ_TYPES.values())}), but got "
                                 f"{row.get('dst_idx')!r}")
            level = int(number(row.get("dst_lev"), "dst_lev"))
            ident = f"{image}.{kind[1]}.{level}.png"
            dmos = number(row.get("dmos"), "dmos")
            errors.unique(ident, line)
            if kind[0] not in type_folders:
                type_folders[kind[0]] = FolderIndex(root / "dst_imgs" / kind[0])
            dist = type_folders[kind[0]].get(ident)
            pairs.append(ScoredPair(ident, refs.get_stem(image), dist, dmos, kind[0]))
        except (ValueError, FileNotFoundError) as err:
            errors.bad(line, ident, err)
    return _nonempty(pairs, source)


def _cell(value) -> str:
    """A spreadsheet cell as text: 1600.0 (a number cell) reads as ``1600``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _csiq_csv_rows(path: Path) -> Iterator[Tuple[int, dict]]:
    errors = RowErrors(path, None)
    for line, row in _csv_rows(path, _CSIQ_COLUMNS, errors):
        yield line, row


def _csiq_xlsx_rows(path: Path) -> Iterator[Tuple[int, dict]]:
    """Rows of the sheet whose header row names ``image``, ``dst_idx``, ``dst_lev`` and ``dmos``."""
    try:
        import openpyxl
    except ModuleNotFoundError:
        raise ValueError(f"{path} is an Excel file, which needs openpyxl (pip install \"rpmetric[iqa]\"); or save its "
                         f"all_by_image sheet as {path.with_suffix('.csv').name} beside it.") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, XML and its own errors for a broken file
        raise ValueError(f"{path} cannot be read as an Excel workbook ({type(err).__name__}: {err}).") from None
    for sheet in book.worksheets:
        header = None
        for line, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            names = [_cell(v).lower() for v in values]
            if header is None:
                if set(_CSIQ_COLUMNS) <= set(names):
                    header = names
                continue
            if any(v is not None and _cell(v) for v in values):
                yield line, dict(zip(header, values))
        if header is not None:
            return
    raise ValueError(f"{path} has no sheet with a header row naming {', '.join(_CSIQ_COLUMNS)} (CSIQ's "
                     "all_by_image sheet).")


def read_pipal(root: Path, split: str = "train", *, skipped: Optional[List[BadItem]] = None) -> List[ScoredPair]:
    """PIPAL's distorted images of a split with their Elo scores (higher is better)."""
    prefix = split.capitalize()
    labels = root / f"{prefix}_Label"
    if not labels.is_dir():
        raise FileNotFoundError(f"PIPAL label folder not found: {labels}; ROOT must hold {prefix}_Ref/, "
                                f"{prefix}_Dis/ and {prefix}_Label/.")
    dist_folder = next((root / f"{prefix}_{n}" for n in ("Dis", "Dist") if (root / f"{prefix}_{n}").is_dir()),
                       root / f"{prefix}_Dis")
    refs, dists = FolderIndex(root / f"{prefix}_Ref"), FolderIndex(dist_folder)
    pairs: List[ScoredPair] = []
    seen = {}
    for source in sorted(labels.glob("*.txt")):
        errors = RowErrors(source, skipped)
        errors.seen = seen  # ids are unique across the label files
        for line, text in _text_lines(source):
            fields = [f.strip() for f in text.split(",")]
            ident = fields[0] or None
            try:
                if len(fields) != 2:
                    raise ValueError(f"expected `NAME,ELO`, but got {text.strip()!r}")
                name = bare_name(fields[0], "name")
                elo = number(fields[1], "Elo")
                errors.unique(name, line)
                match = re.fullmatch(r"([^_]+)_(\d+)_\d+\.\w+", name)
                pairs.append(ScoredPair(name, refs.get_stem(match[1] if match else source.stem), dists.get(name), elo,
                                        match[2] if match else None))
            except (ValueError, FileNotFoundError) as err:
                errors.bad(line, ident, err)
    return _nonempty(pairs, labels)


def read_pieapp(root: Path, split: str = "test", *, skipped: Optional[List[BadItem]] = None) -> List[ScoredPair]:
    """PieAPP's per-image scores (test split only; higher is worse), one pair per distorted image."""
    if split != "test":
        return []  # train and val publish pairwise preferences only (read_pieapp_pairs)
    refs, images = _pieapp_images(root, split)
    pairs: List[ScoredPair] = []
    seen = {}
    files = sorted((root / "labels" / split).glob("*_per_image_score.csv"))
    if not files:
        raise FileNotFoundError(f"PieAPP per-image scores not found: {root / 'labels' / split}/"
                                "ref_*_per_image_score.csv")
    for source in files:
        errors = RowErrors(source, skipped)
        errors.seen = seen
        for line, fields in _plain_csv(source, 3, errors):
            ident = fields[1] or None
            try:
                name = bare_name(fields[1], "distorted image")
                score = number(fields[2], "score")
                errors.unique(name, line)
                ref = refs.get(bare_name(fields[0], "reference image"))
                pairs.append(ScoredPair(name, ref, _pieapp_image(name, refs, images), score, _pieapp_kind(name)))
            except (ValueError, FileNotFoundError) as err:
                errors.bad(line, ident, err)
    return pairs


def read_pieapp_pairs(root: Union[str, Path], split: str = "test", *,
                      skipped: Optional[List[BadItem]] = None) -> List[Triplet]:
    """PieAPP's pairwise preferences as 2AFC triplets: ``left`` is image A, ``right`` image B and
    ``p = 1 - P(A preferred)``, the share who found B closer to the reference. Pairs without a human
    label (the blank raw column of train/val) are not judgements and are left out.

    Example:
        >>> triplets = read_pieapp_pairs("/data/PieAPP", "test")  # doctest: +SKIP
    """
    root = Path(root)
    if split not in IQA_DATASETS["pieapp"].splits:
        raise ValueError(f"Argument `split` must be one of {IQA_DATASETS['pieapp'].splits}, but got {split!r}.")
    refs, images = _pieapp_images(root, split)
    files = sorted((root / "labels" / split).glob("*_pairwise_labels.csv"))
    if not files:
        raise FileNotFoundError(f"PieAPP pairwise labels not found: {root / 'labels' / split}/"
                                "ref_*_pairwise_labels.csv")
    triplets: List[Triplet] = []
    seen = {}
    for source in files:
        errors = RowErrors(source, skipped)
        errors.seen = seen
        for line, fields in _plain_csv(source, 4, errors):
            if not fields[3].strip():
                continue  # no MTurk label for this pair (train/val)
            ident = f"{fields[1]}|{fields[2]}"
            try:
                a, b = bare_name(fields[1], "distorted image A"), bare_name(fields[2], "distorted image B")
                prefer_a = number(fields[3], "probability of preference for A")
                if not 0.0 <= prefer_a <= 1.0:
                    raise ValueError(f"the probability of preference for A must be in [0, 1], but got {fields[3]!r}")
                errors.unique(f"{a}|{b}", line)
                ref = refs.get(bare_name(fields[0], "reference image"))
                triplets.append(Triplet(f"{a}|{b}", ref, _pieapp_image(a, refs, images),
                                        _pieapp_image(b, refs, images), 1.0 - prefer_a))
            except (ValueError, FileNotFoundError) as err:
                errors.bad(line, ident, err)
    return _nonempty(triplets, root / "labels" / split)


def _pieapp_images(root: Path, split: str) -> Tuple[FolderIndex, FolderIndex]:
    return (FolderIndex(root / "reference_images" / split),
            FolderIndex(root / "distorted_images" / split, recursive=True))


def _pieapp_image(name: str, refs: FolderIndex, images: FolderIndex) -> Path:
    """A distorted image by name; in the test split the reference itself is compared as an image too."""
    try:
        return images.get(name)
    except FileNotFoundError:
        if name.lower() in refs.by_name:
            return refs.get(name)
        raise


def _pieapp_kind(name: str) -> Optional[str]:
    """The distortion type of ``distort_001_<type>_<inter|intra>_<n>.png``; ``reference`` for ``ref_001.png``."""
    if name.lower().startswith("ref_"):
        return "reference"
    match = re.fullmatch(r"distort_\d+_(.+?)_(?:inter|intra)_.*", Path(name).stem, flags=re.IGNORECASE)
    return match[1] if match else None


def _plain_csv(path: Path, columns: int, errors: RowErrors) -> Iterator[Tuple[int, List[str]]]:
    """Rows of a header-less or headed CSV with at least ``columns`` fields; a first row whose last
    read field is not a number is taken as the header."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    for line, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < columns:
            errors.bad(line, None, ValueError(f"expected at least {columns} fields, but got {len(row)}"))
            continue
        if line == 1:
            try:
                float(row[columns - 1])
            except ValueError:
                if row[columns - 1].strip():
                    continue  # a header
        yield line, [cell.strip() for cell in row]


def _csv_rows(path: Path, columns: Sequence[str], errors: RowErrors) -> Iterator[Tuple[int, dict]]:
    """Rows of a headed CSV by column name; rows too long or too short are bad rows."""
    reader = read_csv(path)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; it needs {', '.join(columns)} "
                         f"(found: {', '.join(reader.fieldnames or [])}).")
    for row in reader:
        line = reader.line_num
        longer = extra_fields(row, reader)
        if longer or None in row.values():
            errors.bad(line, None, ValueError(longer or f"the row has fewer fields than the header "
                                                        f"({len(reader.fieldnames)})"))
            continue
        yield line, row


def read_iqa_csv(path: Path, split: Optional[str] = None, *, skipped: Optional[List[BadItem]] = None,
                 allow_outside_root: bool = False) -> List[ScoredPair]:
    """A generic IQA file: ``ref,dist,mos`` and optional ``split``, ``type`` and ``id`` columns, paths
    relative to the file's folder; ``split`` keeps the rows of that split (default: all). The id is
    the ``id`` column, else the ``dist`` path as written."""
    source = Path(path)
    if source.is_dir():
        raise ValueError(f"{source} is a folder; with --dataset csv, ROOT is the CSV file (ref,dist,mos[,split]).")
    _score_file(source, "IQA csv file")
    errors, pairs = RowErrors(source, skipped), []
    reader_columns = ("ref", "dist", "mos")
    for line, row in _csv_rows(source, reader_columns, errors):
        if split is not None and (row.get("split") or "").strip() != split:
            continue
        ident = (row.get("id") or row["dist"] or "").strip() or None
        try:
            mos = number(row["mos"], "mos")
            errors.unique(ident or f"line {line}", line)
            ref = inside(source.parent, row["ref"], "ref", allow_outside_root)
            dist = inside(source.parent, row["dist"], "dist", allow_outside_root)
            pairs.append(ScoredPair(ident, ref, dist, mos, (row.get("type") or "").strip() or None))
        except (ValueError, FileNotFoundError) as err:
            errors.bad(line, ident, err)
    if split is not None and not pairs and not errors.seen:
        raise ValueError(f"{source} has no row with split={split!r}.")
    return _nonempty(pairs, source)
