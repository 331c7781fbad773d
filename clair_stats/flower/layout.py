"""What a client sends: its arrays, grouped into the modules CLAIR analyses.

A Flower client replies with an ArrayRecord: named arrays. :class:`ArrayLayout`
reads the names and shapes once (from the arrays the server sent, or from the
replies) and sorts them into three kinds:

- **LoRA modules**: a pair ``<module>.lora_A.weight`` (r x in) and
  ``<module>.lora_B.weight`` (out x r), PEFT's naming in the state dict of
  ``peft.get_peft_model_state_dict`` (an adapter-name segment,
  ``<module>.lora_A.default.weight``, is accepted too). The module's update is
  Theta^_k = B_k A_k (p = out, q = in). The LoRA scaling s = alpha / r multiplies
  every client's update of a module alike and cancels: the flags do not depend on
  it and the refined factors, loaded with the same scaling, give s times the
  refined update;
- **matrix modules**: any other 2-D array with both sides at least 2, one dense
  CLAIR problem (K, p, q) of its own (a regression coefficient matrix, a dense
  weight update);
- **other arrays**: everything else (vectors, scalars, arrays of more than two
  dimensions, thin matrices, and LoRA tensors that are not a plain A/B pair such
  as ``lora_embedding_A`` or ``lora_magnitude_vector``): averaged over the
  collaborative set.

:meth:`ArrayLayout.problems` lists, in words, what keeps one client's arrays from
entering a round: missing or extra names, wrong shapes, non-finite values.

This module needs numpy only; the Flower types are handled in
:mod:`clair_stats.flower.strategy`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["LORA_KEY", "ArrayLayout"]

#: A LoRA factor in PEFT's naming: ``<module>.lora_<A|B>[.<adapter>].weight``.
LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$"
)


def _preview(items, n: int = 4) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


@dataclass(frozen=True)
class ArrayLayout:
    """Names, shapes and dtypes of a client's arrays, and their CLAIR modules.

    Parameters
    ----------
    shapes : dict of str to tuple of int
        Every array's shape, in the order received.
    dtypes : dict of str to str
        Every array's dtype (the refined arrays are sent back in it).
    lora : dict of str to tuple of (str, str)
        LoRA module name -> (key of B, key of A).
    matrices : tuple of str
        Keys of the 2-D arrays that are modules of their own.
    others : tuple of str
        Keys of the arrays averaged over the collaborative set.
    """

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    lora: dict[str, tuple[str, str]]
    matrices: tuple[str, ...]
    others: tuple[str, ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ArrayLayout:
        """The layout of one client's arrays.

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray
            The client's named arrays (an ArrayRecord as numpy arrays), the
            PEFT state-dict names for LoRA factors.

        Returns
        -------
        ArrayLayout
            The shapes, dtypes and modules of these arrays.

        Raises
        ------
        ValueError
            If there are no arrays, or a LoRA pair's ranks disagree (B of shape
            (out, r) and A of shape (r', in) with r != r').
        """
        if not arrays:
            raise ValueError("the arrays are empty: there is nothing to aggregate.")
        shapes = {k: tuple(int(d) for d in np.shape(v)) for k, v in arrays.items()}
        dtypes = {k: str(np.asarray(v).dtype) for k, v in arrays.items()}
        factors: dict[tuple[str, str | None], dict[str, str]] = {}
        for key in shapes:
            match = LORA_KEY.match(key)
            if match and len(shapes[key]) == 2:
                pair = (match["module"], match["adapter"])
                factors.setdefault(pair, {})[match["factor"]] = key
        lora: dict[str, tuple[str, str]] = {}
        for (module, adapter), keys in factors.items():
            if set(keys) != {"A", "B"}:
                continue  # half a pair: an other array
            key_b, key_a = keys["B"], keys["A"]
            if shapes[key_b][1] != shapes[key_a][0]:
                raise ValueError(
                    f"LoRA module {module!r}: {key_b} has shape {shapes[key_b]} and "
                    f"{key_a} has shape {shapes[key_a]}; B must be (out, r) and A "
                    "(r, in) with the same r."
                )
            name = module if adapter is None else f"{module}.{adapter}"
            lora[name] = (key_b, key_a)
        paired = {k for keys in lora.values() for k in keys}
        matrices = tuple(
            k
            for k, s in shapes.items()
            if k not in paired and len(s) == 2 and min(s) >= 2 and ".lora_" not in k
        )
        others = tuple(k for k in shapes if k not in paired and k not in matrices)
        return cls(shapes, dtypes, lora, matrices, others)

    @property
    def modules(self) -> tuple[str, ...]:
        """The CLAIR modules: the LoRA modules, then the matrix modules."""
        return tuple(self.lora) + self.matrices

    def rank(self, module: str) -> int:
        """The LoRA rank r of a LoRA module.

        Parameters
        ----------
        module : str
            A LoRA module name, a key of ``lora``.

        Returns
        -------
        int
            r, the number of rows of the module's A.
        """
        return self.shapes[self.lora[module][1]][0]

    def problems(self, arrays: Mapping[str, np.ndarray]) -> list[str]:
        """What keeps ``arrays`` from this layout, in words (empty if nothing).

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray
            One client's named arrays.

        Returns
        -------
        list of str
            One sentence per kind of problem: missing or unexpected names, wrong
            shapes, non-numeric or non-finite arrays.
        """
        found: list[str] = []
        missing = [k for k in self.shapes if k not in arrays]
        extra = [k for k in arrays if k not in self.shapes]
        if missing:
            found.append(f"missing arrays {_preview(missing)}")
        if extra:
            found.append(f"unexpected arrays {_preview(extra)}")
        wrong = [
            f"{k} {tuple(np.shape(arrays[k]))} (expected {self.shapes[k]})"
            for k in self.shapes
            if k in arrays and tuple(np.shape(arrays[k])) != self.shapes[k]
        ]
        if wrong:
            found.append("wrong shapes: " + "; ".join(wrong[:4]))
        bad = []
        for k in self.shapes:
            if k not in arrays:
                continue
            value = np.asarray(arrays[k])
            if not (
                np.issubdtype(value.dtype, np.floating)
                or np.issubdtype(value.dtype, np.integer)
            ):
                bad.append(f"{k} (dtype {value.dtype})")
            elif not np.isfinite(value).all():
                bad.append(f"{k} (NaN or infinite values)")
        if bad:
            found.append("non-numeric or non-finite arrays " + _preview(bad))
        return found
