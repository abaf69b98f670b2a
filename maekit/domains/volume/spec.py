"""Volume vocabulary: MRI modality names (BraTS's and their public aliases) and CT."""

from __future__ import annotations

#: the BraTS 2021 modalities, in the order the kit's configs use
BRATS_MODALITIES = ["t1", "t1ce", "t2", "flair"]
#: public modality names -> the kit's names (BraTS 2021 names are the kit's)
MODALITY_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "native": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
    "adc": "adc", "ct": "ct",
}


def canonical_modality(name: str) -> str:
    """The kit's name of a modality (`T1Gd` -> `t1ce`, `t2f` -> `flair`); unknown names lower-cased."""
    return MODALITY_ALIASES.get(name.strip().lower(), name.strip().lower())
