"""Multispectral satellite and aerial tiles (band groups, per-band statistics, GeoTIFF chips).

Importing this package is cheap and needs no extra: it registers the domain and names its
classes; the readers and datamodules (rasterio, `pip install 'maekit[geo]'`) load on first use.
"""

from maekit.domains.registry import register_domain
from maekit.lazy import lazy_exports

_HERE = "maekit.domains.multispectral"
__getattr__ = lazy_exports(__name__, {
    "MultispectralAdapter": f"{_HERE}.adapter", "WavelengthAdapter": f"{_HERE}.wavelength",
    "BandPreset": f"{_HERE}.spec", "PRESETS": f"{_HERE}.spec", "get_preset": f"{_HERE}.spec",
    "Chip": f"{_HERE}.readers", "read_chip": f"{_HERE}.readers", "read_raster": f"{_HERE}.readers",
    "ChipDataModule": f"{_HERE}.datamodule", "ChipDataset": f"{_HERE}.datamodule",
    "RandomWindowDataset": f"{_HERE}.windows", "RasterDataModule": f"{_HERE}.windows",
    "GeoSamplerDataModule": f"{_HERE}.torchgeo", "TorchGeoClassificationDataModule": f"{_HERE}.torchgeo",
    "make_chip_dataset": f"{_HERE}.samples",
    "BandSpec": f"{_HERE}.sensors", "SensorSpec": f"{_HERE}.sensors", "load_sensor": f"{_HERE}.sensors",
    "sensor_names": f"{_HERE}.sensors",
    "MultiSensorDataModule": f"{_HERE}.multisensor", "make_multisensor_dataset": f"{_HERE}.sensor_samples",
    "TemporalMultispectralAdapter": f"{_HERE}.temporal", "TemporalMixin": f"{_HERE}.temporal",
    "TemporalWavelengthAdapter": f"{_HERE}.temporal",
    "TimeSeriesDataModule": f"{_HERE}.timeseries", "TimeSeriesDataset": f"{_HERE}.timeseries",
    "make_time_series_dataset": f"{_HERE}.temporal_samples",
})
__all__ = ["BandPreset", "BandSpec", "Chip", "ChipDataModule", "ChipDataset", "GeoSamplerDataModule",
           "MultiSensorDataModule", "MultispectralAdapter", "PRESETS", "RandomWindowDataset", "RasterDataModule",
           "SensorSpec", "TemporalMixin", "TemporalMultispectralAdapter", "TemporalWavelengthAdapter",
           "TimeSeriesDataModule", "TimeSeriesDataset", "TorchGeoClassificationDataModule", "WavelengthAdapter",
           "get_preset", "load_sensor", "make_chip_dataset", "make_multisensor_dataset", "make_time_series_dataset",
           "read_chip", "read_raster", "sensor_names"]

register_domain(
    "multispectral",
    adapter=f"{_HERE}.adapter:MultispectralAdapter",
    datamodules=[f"{_HERE}.datamodule:ChipDataModule", f"{_HERE}.multisensor:MultiSensorDataModule",
                 f"{_HERE}.windows:RasterDataModule",
                 f"{_HERE}.torchgeo:GeoSamplerDataModule", f"{_HERE}.torchgeo:TorchGeoClassificationDataModule",
                 f"{_HERE}.timeseries:TimeSeriesDataModule"],
    samples={"naip": f"{_HERE}.samples:sample_data", "toa": f"{_HERE}.samples:sample_data",
             "multisensor": f"{_HERE}.sensor_samples:sample_data",
             "timeseries": f"{_HERE}.temporal_samples:sample_data"},
    extra="geo",
    description="band groups of GeoTIFF / npz chips, whole rasters and torchgeo datasets; band presets:",
    example=f"{_HERE}.samples:example",
    commands={"predict-scene": f"{_HERE}.scenes:cmd_predict_scene"},
    details=f"{_HERE}.spec:describe_presets",
    shard_kinds={"chips": f"{_HERE}.datamodule:FinishChip", "windows": "maekit.data.streaming:FinishAsStored"},
)
