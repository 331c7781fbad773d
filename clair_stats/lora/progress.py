"""Progress of work done module by module (or client by client).

One bar per phase of ``clair adapters``: units done (those found done by a
resumed run count from the start), the mean seconds one unit took in its worker,
and the time left at the rate seen so far in this run (tqdm's estimate, which
leaves out the resumed units). Without tqdm, one line per unit on stderr.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ModuleProgress"]


class ModuleProgress:
    """A context manager: ``done(seconds)`` after each unit.

    Parameters
    ----------
    total : int
        Units in all.
    desc : str
        The bar's label.
    enabled : bool
        False shows nothing.
    initial : int
        Units already done (a resumed run).
    unit : str
        What a unit is, for the rate (``"module"``).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        initial: int = 0,
        unit: str = "module",
    ) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.initial, self.unit = initial, unit
        self.count, self.seconds = initial, 0.0
        self.computed = 0
        self.started = time.perf_counter()
        self.bar = None

    def __enter__(self) -> ModuleProgress:
        if not self.enabled:
            return self
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return self
        self.bar = tqdm(
            total=self.total,
            initial=self.initial,
            desc=self.desc,
            unit=self.unit,
            dynamic_ncols=True,
        )
        return self

    def done(self, seconds: float) -> None:
        """One more unit done, which took ``seconds`` in its worker.

        Parameters
        ----------
        seconds : float
            The unit's own wall time.
        """
        self.count += 1
        self.computed += 1
        self.seconds += seconds
        if not self.enabled:
            return
        mean = self.seconds / self.computed
        if self.bar is not None:
            self.bar.set_postfix_str(f"{mean:.2f} s/{self.unit}", refresh=False)
            self.bar.update(1)
            return
        elapsed = time.perf_counter() - self.started
        left = (self.total - self.count) * elapsed / self.computed
        print(
            f"{self.desc}: {self.count}/{self.total}, {mean:.2f} s/{self.unit}, "
            f"about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
