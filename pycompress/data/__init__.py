"""Bundled English evaluation corpus for comparing sentence embeddings.

``sentences.txt`` holds 480 distinct, hand-written English sentences, one per line (UTF-8, ASCII
punctuation). They cover everyday life, science, technology, sports, cooking, travel, history,
finance, health and weather, with questions, short (4 words) to long (35 words) sentences,
paraphrase pairs, near-duplicates on different topics, numbers, names and quotes. They are used to
compare the embeddings of a compressed text model against those of the original model.

The first 320 lines are the ``"calibration"`` split and the last 160 the ``"heldout"`` split.
"""

from importlib import resources

__all__ = ["sentences", "SPLITS"]

SPLITS = ("all", "calibration", "heldout")
_N_CALIBRATION = 320


def sentences(split: str = "all") -> list[str]:
    """Return the corpus sentences for ``split``.

    Args:
        split: ``"all"`` for all 480 sentences, ``"calibration"`` for the first 320, or
            ``"heldout"`` for the last 160.

    Returns:
        A new list of sentences, in file order.

    Raises:
        ValueError: if ``split`` is not one of ``"all"``, ``"calibration"`` or ``"heldout"``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in SPLITS)}; got {split!r}")
    text = resources.files("pycompress.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if split == "calibration":
        return lines[:_N_CALIBRATION]
    if split == "heldout":
        return lines[_N_CALIBRATION:]
    return lines
