"""How many held-out normal images a calibrated threshold needs.

A threshold at false-positive rate f is the (1 - f)-quantile of a score over n
held-out normal images: about n·f of them lie above it, and it is only as good
as they are many. The false-positive rate it really has on new normal images
varies from one draw of n images to the next with a relative standard deviation
of about sqrt((1 - f) / (n·f)) (the order statistic's Beta law). The rule:

    a threshold at f needs n·f ≥ MIN_TAIL = 10 held-out images beyond it,

so n ≥ 10 / f (1,000 images for f = 1 %) and the realised rate stays within
about ±32 % of f (one standard deviation). Below it the threshold is withheld:
the manifest records why (`calibration.problems`), and /elbo returns
`calibration_problem` instead of a number that means nothing. docs/own-images.md
states the rule for users.
"""

from __future__ import annotations

from vae_contract.manifest import Calibration

MIN_TAIL = 10  # held-out normal images a threshold needs above it
DEFAULT_FPR = 0.01  # the false-positive rate /elbo sets its thresholds at unless asked


def images(calibration: Calibration, score: str) -> int:
    """How many held-out images a score's quantiles come from."""
    entry = calibration.scores.get(score)
    return calibration.n if entry is None or entry.n is None else entry.n


def min_fpr(n: int) -> float:
    """The smallest false-positive rate whose threshold n held-out images support."""
    return MIN_TAIL / n if n > 0 else 1.0


def tail_problem(n: int, fpr: float, score: str) -> str | None:
    """Why a threshold at `fpr` from n held-out images is withheld, or None when the
    rule holds."""
    if n * fpr >= MIN_TAIL:
        return None
    need = int(-(-MIN_TAIL // fpr)) if fpr > 0 else None
    needs = f"at least {need}" if need is not None else "infinitely many"
    return (
        f"a threshold at fpr {fpr:g} needs {needs} held-out normal images "
        f"({MIN_TAIL} beyond it); score={score} was calibrated on {n}, enough for fpr ≥ "
        f"{min_fpr(n):.3g}: ask for a larger fpr, or calibrate on more normal images "
        "(vae-calibrate --normal FOLDER)"
    )


def threshold_problem(calibration: Calibration | None, score: str, fpr: float) -> str | None:
    """Why this version's threshold for `score` at `fpr` is withheld by the rule, or None."""
    if calibration is None:
        return None
    return tail_problem(images(calibration, score), fpr, score)


def recorded(counts: dict[str, int]) -> dict[str, str]:
    """The manifest's `problems` from how many held-out images each score's quantiles
    come from: the scores whose n falls short of the rule at the default fpr."""
    found = {score: tail_problem(n, DEFAULT_FPR, score) for score, n in counts.items()}
    return {score: problem for score, problem in found.items() if problem is not None}
