"""Volumes: multimodal MRI (cases may lack modalities) and CT, as 3D patch tokens.

Importing this package is cheap and needs no extra; the readers, datamodule and writers
(MONAI, nibabel: `pip install 'maekit[medical]'`) load on first use.
"""

from maekit.domains.registry import register_domain
from maekit.lazy import lazy_exports

_HERE = "maekit.domains.volume"
__getattr__ = lazy_exports(__name__, {
    "VolumeAdapter": f"{_HERE}.adapter", "BRATS_MODALITIES": f"{_HERE}.spec", "canonical_modality": f"{_HERE}.spec",
    "Case": f"{_HERE}.readers", "find_cases": f"{_HERE}.readers", "load_case": f"{_HERE}.readers",
    "VolumeDataModule": f"{_HERE}.datamodule", "VolumeDataset": f"{_HERE}.datamodule",
    "VolumeSegmentationWriter": f"{_HERE}.writers",
    "make_brats_dataset": f"{_HERE}.samples", "make_ct_dataset": f"{_HERE}.samples",
})
__all__ = ["BRATS_MODALITIES", "Case", "VolumeAdapter", "VolumeDataModule", "VolumeDataset",
           "VolumeSegmentationWriter", "canonical_modality", "find_cases", "load_case", "make_brats_dataset",
           "make_ct_dataset"]

register_domain(
    "volume",
    adapter=f"{_HERE}.adapter:VolumeAdapter",
    datamodules=[f"{_HERE}.datamodule:VolumeDataModule"],
    samples={"brats": f"{_HERE}.samples:sample_data", "ct": f"{_HERE}.samples:sample_data"},
    extra="medical",
    description="multimodal MRI (t1, t1ce, t2, flair; cases may lack some) and CT; layouts: BraTS 2021/2023, "
                "MSD Decathlon, nnU-Net raw, plain folder, DICOM series",
    example=f"{_HERE}.samples:example",
    shard_kinds={"volumes": f"{_HERE}.datamodule:FinishVolume"},
)
