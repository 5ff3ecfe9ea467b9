"""LFW's people list (View 2's ``people.txt``): who is in which of the ten identity-disjoint folds, and the tune and
report splits built on them. Embedding training keeps to folds 1-9 and the attendance demo and benchmarks report on
fold 10's people, so they all read it here."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from common.config import ConfigError
from common.errors import InputError

REPORT_FOLD = 10  # View 2's fold whose people nothing is trained or tuned on: the report set
# Generated benchmarks (the demo's classes, the classroom and group-photo benchmarks) draw the people of folds 1-9
# with seeds from 0 to tune, and fold 10's people with seeds from REPORT_SEED to report: people and seeds disjoint.
SPLIT_FOLDS = {"tune": [fold for fold in range(1, 11) if fold != REPORT_FOLD], "report": [REPORT_FOLD]}
REPORT_SEED = 1000


def split_folds(split: str, key: str = "split") -> list[int]:
    """The LFW folds whose people a benchmark split draws (``key`` names the setting in the error)."""
    if split not in SPLIT_FOLDS:
        raise ConfigError(f"{key} must be one of {', '.join(SPLIT_FOLDS)}, got {split!r}")
    return SPLIT_FOLDS[split]


def split_seed(split: str, seed: int) -> int:
    """The first seed of a split's draws: ``seed`` to tune, ``REPORT_SEED + seed`` to report."""
    return (REPORT_SEED if split == "report" else 0) + seed


def read_lfw_people_folds(people_txt: str | Path) -> list[dict[str, int]]:
    """LFW View-2 ``people.txt`` → one ``{name: image count}`` per fold (fold 1 first). The file is the number of
    folds, then per fold a count line followed by that many ``name<TAB>count`` lines."""
    path = Path(people_txt)
    if not path.is_file():
        raise FileNotFoundError(f"LFW people file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        position, folds = 1, []
        for _ in range(int(lines[0])):
            count = int(lines[position])
            entries = [line.split() for line in lines[position + 1:position + 1 + count]]
            if len(entries) != count or any(len(entry) != 2 for entry in entries):
                raise ValueError(f"fold {len(folds) + 1} should list {count} 'name count' lines")
            folds.append({name: int(number) for name, number in entries})
            position += 1 + count
    except (ValueError, IndexError) as error:
        raise InputError(f"{path}: not an LFW people.txt ({error})") from None
    return folds


def lfw_fold_identities(people_txt: str | Path, folds: Iterable[int]) -> list[str]:
    """Sorted names of the people in the given LFW View-2 folds (1-based). LFW's folds are identity-disjoint, so
    training on folds 1–9 leaves fold 10's people unseen."""
    all_folds = read_lfw_people_folds(people_txt)
    names: set[str] = set()
    for fold in folds:
        if not 1 <= fold <= len(all_folds):
            raise ConfigError(f"LFW fold {fold} does not exist; {people_txt} has folds 1..{len(all_folds)}")
        names.update(all_folds[fold - 1])
    return sorted(names)
