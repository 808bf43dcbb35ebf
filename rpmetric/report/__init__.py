"""Pictures of rpmetric's results, fed with results the commands already have: review pages
(HTML, offline) and figures (matplotlib, the ``plot`` extra).

Example:
    >>> from rpmetric.report import write_dedup_page, write_search_page, write_eval_page
    >>> from rpmetric.report import robustness_curve, score_bars
"""

from .dedup import write_dedup_page, write_near_page
from .evaluation import write_eval_page
from .figures import FIGURE_FORMATS, comparison_figure, read_result, robustness_curve, save_figure, score_bars
from .page import check_page_path, files_folder
from .search import write_search_page
from .thumbnails import Thumbnails

__all__ = ["write_dedup_page", "write_near_page", "write_search_page", "write_eval_page", "check_page_path",
           "files_folder", "Thumbnails", "FIGURE_FORMATS", "comparison_figure", "read_result", "robustness_curve",
           "save_figure", "score_bars"]
