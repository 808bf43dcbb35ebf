"""Pictures of results that the commands already have: figures (matplotlib, the ``plot`` extra)."""

from .figures import FIGURE_FORMATS, comparison_figure, read_result, robustness_curve, save_figure, score_bars

__all__ = ["FIGURE_FORMATS", "comparison_figure", "read_result", "robustness_curve", "save_figure", "score_bars"]
