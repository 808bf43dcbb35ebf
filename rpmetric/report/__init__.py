"""Pictures of rpmetric's results: review pages (HTML, offline) fed with results the commands
already have.

Example:
    >>> from rpmetric.report import write_dedup_page, write_search_page, write_eval_page
"""

from .dedup import write_dedup_page, write_near_page
from .evaluation import write_eval_page
from .page import check_page_path, files_folder
from .search import write_search_page
from .thumbnails import Thumbnails

__all__ = ["write_dedup_page", "write_near_page", "write_search_page", "write_eval_page", "check_page_path",
           "files_folder", "Thumbnails"]
