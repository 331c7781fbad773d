"""The order of the gallery: from the quick start through the estimator's steps
to the LoRA tools and the studies (sphinx-gallery's ``within_subsection_order``)."""

from __future__ import annotations

ORDER = (
    "plot_quick_start.py",
    "plot_decomposition_certificate.py",
    "plot_detection_calibration.py",
    "plot_exact_vs_fast.py",
    "plot_lora_adapters.py",
    "plot_study_quick_grid.py",
)


class ExampleOrder:
    """Sort key: the examples of :data:`ORDER` first, in that order, then the
    others by name."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        rank = ORDER.index(filename) if filename in ORDER else len(ORDER)
        return rank, filename
